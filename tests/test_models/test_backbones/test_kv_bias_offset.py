"""DA-VPT+'s key-bias offset is inert in a standard ViT block, and only there.

A bias added to every key adds ``q . b`` to all logits of a query's row; softmax is invariant
to a per-row shift, so neither the output nor the gradient depends on it. The tests run in
float64 so that "zero" means rounding noise (~1e-16 relative), not a loose tolerance: the
value-bias half of the same parameter, and the key bias of a trunk with q/k normalisation
(LayerNorm on k *after* the bias, which breaks the invariance), are the controls.
"""
import pytest
import torch
from mmseg.registry import MODELS

from tests.helpers import NUM_CLASSES, make_data_samples, tiny_backbone, tiny_segmentor


def _segmentor(qk_norm: bool, metric_losses: bool = True):
    """DA-VPT+, or without metric losses VPT-Deep with the same k/v bias offsets."""
    timm_kwargs = dict(tiny_backbone()['timm_kwargs'], qk_norm=qk_norm)
    backbone = tiny_backbone(tuning_mode='da-vpt+', timm_kwargs=timm_kwargs) if metric_losses \
        else tiny_backbone(tuning_mode=None, kv_bias_offset=True, timm_kwargs=timm_kwargs)
    return MODELS.build(tiny_segmentor(backbone)).double()


def _offsets(model):
    return [block.attn.qkv for block in model.backbone.trunk.blocks]


def _batch():
    inputs = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    labels = torch.randint(0, NUM_CLASSES, (2, 32, 32))
    return inputs, make_data_samples(labels)


def _gradients(model, inputs, samples):
    """(key, value) gradient of every block's offset from the model's training loss."""
    model.train()
    losses = model.loss(inputs, samples)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    grads = []
    for qkv in _offsets(model):
        grad = qkv.kv_bias_offset.grad
        grads.append((grad[:qkv.query_width], grad[qkv.query_width:]))
    return grads


def _logits_after_key_shift(model, inputs, samples, scale=1.0):
    """Segmentation logits before and after adding a random vector to every key bias."""
    model.eval()
    metas = [s.metainfo for s in samples]
    with torch.no_grad():
        before = model.encode_decode(inputs, metas)
        for qkv in _offsets(model):
            qkv.kv_bias_offset[:qkv.query_width] += scale * torch.randn(
                qkv.query_width, dtype=torch.float64)
        after = model.encode_decode(inputs, metas)
    return before, after


@pytest.mark.parametrize('metric_losses', [False, True])
def test_key_bias_offset_gets_no_gradient_in_a_standard_block(metric_losses):
    """Segmentation loss alone, and the full DA-VPT+ loss with the paper's pairing."""
    model = _segmentor(qk_norm=False, metric_losses=metric_losses)
    assert model.with_guidance == metric_losses
    inputs, samples = _batch()
    for key_grad, value_grad in _gradients(model, inputs, samples):
        assert value_grad.abs().max() > 1e-6  # the value half does learn
        assert key_grad.abs().max() <= 1e-12 * value_grad.abs().max()


def test_key_bias_offset_does_not_change_the_output_of_a_standard_block():
    model = _segmentor(qk_norm=False)
    before, after = _logits_after_key_shift(model, *_batch())
    assert before.abs().max() > 1e-3
    assert (after - before).abs().max() <= 1e-12 * before.abs().max()


def test_key_bias_offset_matters_with_qk_norm():
    """timm's qk_norm normalises k after the bias: the shift is no longer per-row."""
    model = _segmentor(qk_norm=True)
    inputs, samples = _batch()
    for key_grad, value_grad in _gradients(model, inputs, samples):
        assert key_grad.abs().max() > 1e-6 * value_grad.abs().max()
    before, after = _logits_after_key_shift(model, inputs, samples)
    assert (after - before).abs().max() > 1e-3 * before.abs().max()
