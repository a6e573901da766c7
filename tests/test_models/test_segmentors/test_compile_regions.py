"""compile_regions (torch.compile of the blocks and heads) changes the speed, not the maths:
one training step's losses and gradients equal the eager model's."""
import copy

import torch
from mmseg.registry import MODELS

from tests.helpers import NUM_CLASSES, make_data_samples, tiny_segmentor

# aot_eager traces and partitions exactly as inductor does but runs the traced graphs with
# torch's own kernels: the wiring is checked in seconds, without generating C++ on 2 cores.
COMPILE = dict(backend='aot_eager')


def fast_heads(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    for head in [cfg['decode_head'], *cfg['auxiliary_head']]:
        head['type'] = 'FastSETRUPHead'
    return cfg


def one_step(model, inputs, samples):
    model.train()
    torch.manual_seed(5)  # the same class assignment in both models
    losses = model.loss(inputs, samples)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    return ({k: v.detach() for k, v in losses.items()},
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})


def test_one_step_is_the_same_with_and_without_compile_regions():
    cfg = fast_heads(tiny_segmentor())
    eager = MODELS.build(cfg)
    compiled = MODELS.build(dict(cfg, compile_regions=COMPILE))
    compiled.load_state_dict(eager.state_dict())
    inputs = torch.randn(2, 3, 32, 32)
    samples = make_data_samples(torch.randint(0, NUM_CLASSES, (2, 32, 32)))
    # The loss graph sees one stacked label tensor, not the samples: a batch whose labels
    # are views of other strides reuses it.
    samples[1].gt_sem_seg.data = samples[1].gt_sem_seg.data.transpose(-1, -2) \
        .contiguous().transpose(-1, -2)
    losses, grads = one_step(eager, inputs, samples)
    compiled_losses, compiled_grads = one_step(compiled, inputs, samples)
    assert losses.keys() == compiled_losses.keys() and 'loss_prompt_token' in losses
    for key in losses:
        torch.testing.assert_close(compiled_losses[key], losses[key], rtol=1e-6, atol=1e-7)
    assert grads.keys() == compiled_grads.keys()
    for key in grads:
        torch.testing.assert_close(compiled_grads[key], grads[key], rtol=1e-5, atol=1e-7)
    # What was compiled: every block and head, and the heads' tensor-only loss.
    for module in [*compiled.backbone.trunk.blocks, compiled.decode_head,
                   *compiled.auxiliary_head]:
        assert module._compiled_call_impl is not None
    for head in [compiled.decode_head, *compiled.auxiliary_head]:
        assert 'loss_by_labels' in vars(head)
    assert 'loss_by_labels' not in vars(eager.decode_head)


def test_other_heads_get_their_loss_by_feat_compiled():
    model = MODELS.build(dict(tiny_segmentor(), compile_regions=COMPILE))  # mmseg's heads
    assert 'loss_by_feat' in vars(model.decode_head)
    losses = model.loss(torch.randn(2, 3, 32, 32),
                        make_data_samples(torch.randint(0, NUM_CLASSES, (2, 32, 32))))
    assert all(torch.isfinite(v).all() for v in losses.values())
