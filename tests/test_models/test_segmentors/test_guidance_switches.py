"""The open choices of DA-VPT as switches: embedding pairing, data-side gradient,
Proxy-Anchor normalisation and scale (tools/study.py compares them on real data)."""
import pytest
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS

from tests.helpers import make_data_samples, tiny_backbone, tiny_segmentor
from davpt_seg.models.losses import ProxyAnchorLoss
from davpt_seg.models.segmentors.davpt_encoder_decoder import EMBEDDING_PAIRINGS

IGNORE = 255


def build(backbone=None, **overrides):
    return MODELS.build(tiny_segmentor(backbone=backbone, **overrides))


def one_class_labels():
    """Image b holds only class b + 1, in its first two 8x8 cells: a fixed assignment."""
    labels = torch.full((3, 32, 32), IGNORE)
    for b in range(3):
        labels[b, :8, :16] = b + 1
    return labels


def recorded_metric_inputs(model, aux, labels):
    """[token call, CLS call] of the guided block: (data points, proxies, their labels)."""
    calls = []

    def record(module, args):
        points, proxies, prompt_labels, valid = args
        calls.append((points[valid], proxies, prompt_labels[valid]))

    model.loss_prompt_token.register_forward_pre_hook(record)
    model.loss_prompt_cls.register_forward_pre_hook(record)
    model.prompt_losses(aux, make_data_samples(labels))
    return calls


@pytest.mark.parametrize('pairing', sorted(EMBEDDING_PAIRINGS))
def test_each_pairing_compares_the_spaces_it_names(pairing):
    model = build(embedding_pairing=pairing).eval()
    aux = model.backbone.forward_with_guidance(torch.randn(3, 3, 32, 32))[1]
    (token_call, cls_call) = recorded_metric_inputs(model, aux, one_class_labels())
    prompt_space, patch_space, cls_space = EMBEDDING_PAIRINGS[pairing]
    block = aux.guided[0]
    torch.testing.assert_close(token_call[0], block.patches[patch_space][:, :2].mean(1))
    torch.testing.assert_close(token_call[1], block.prompts[prompt_space])
    torch.testing.assert_close(cls_call[0], block.cls[cls_space])
    torch.testing.assert_close(cls_call[1], block.prompts[prompt_space])
    # Class c maps to prompt c mod 3 before any clustering.
    assert token_call[2].tolist() == [1, 2, 0]


def test_pairings_give_different_losses():
    x, labels = torch.randn(3, 3, 32, 32), one_class_labels()
    losses = {}
    for pairing in EMBEDDING_PAIRINGS:
        torch.manual_seed(0)
        model = build(embedding_pairing=pairing).eval()
        losses[pairing] = model.loss(x, make_data_samples(labels))['loss_prompt_token'].item()
    assert len({round(v, 6) for v in losses.values()}) == len(EMBEDDING_PAIRINGS)


def _metric_gradients(detach_data: bool, pairing: str = 'query-attention'):
    torch.manual_seed(0)
    model = build(tiny_backbone(tuning_mode='da-vpt+'), detach_data=detach_data,
                  embedding_pairing=pairing).train()
    losses = model.loss(torch.randn(3, 3, 32, 32), make_data_samples(one_class_labels()))
    (losses['loss_prompt_token'] + losses['loss_prompt_cls']).backward()
    return {name: param.grad for name, param in model.backbone.named_parameters()
            if param.requires_grad}


def _reached(grads, name):
    return grads[name] is not None and grads[name].abs().sum() > 0


def test_detached_data_lets_the_losses_move_only_the_guided_prompts():
    attached, detached = _metric_gradients(False), _metric_gradients(True)
    # The guided block is block 2: its prompts learn from the losses either way.
    assert _reached(attached, 'prompts.2') and _reached(detached, 'prompts.2')
    # Through the guided block's input, the attached losses reach every earlier prompt and
    # k/v offset; detached, they reach none of them.
    for name in ('prompts.0', 'prompts.1', 'trunk.blocks.0.attn.qkv.kv_bias_offset',
                 'trunk.blocks.1.attn.qkv.kv_bias_offset'):
        assert _reached(attached, name), name
        assert not _reached(detached, name), name
    # The prompts' query does not depend on the block's own k/v offsets.
    assert not _reached(detached, 'trunk.blocks.2.attn.qkv.kv_bias_offset')
    # In the key-query pairing the prompts' keys carry the block's key-bias offset.
    key_query = _metric_gradients(True, 'key-query')
    assert _reached(key_query, 'trunk.blocks.2.attn.qkv.kv_bias_offset')
    assert not _reached(key_query, 'prompts.1')


def test_unknown_pairing_is_a_clear_error():
    with pytest.raises(ValueError, match="embedding_pairing='value-query' is not one of"):
        build(embedding_pairing='value-query')


# --------------------------------------------------------------- Proxy-Anchor variants
def naive_proxy_anchor(x, proxies, labels, alpha, margin, positive_over_all, proxy_scale=1.):
    """The formula with explicit loops; ``proxy_scale`` multiplies the normalised proxies
    (the authors' release uses 5)."""
    x, p = F.normalize(x, dim=-1), F.normalize(proxies, dim=-1) * proxy_scale
    sim = x @ p.t()
    pos, neg, with_pos = 0., 0., 0
    for j in range(p.shape[0]):
        mine = labels == j
        if mine.any():
            with_pos += 1
            pos += torch.log1p(torch.exp(-alpha * (sim[mine, j] - margin)).sum())
        others = ~mine
        if others.any():
            neg += torch.log1p(torch.exp(alpha * (sim[others, j] + margin)).sum())
    return pos / (p.shape[0] if positive_over_all else with_pos) + neg / p.shape[0]


@pytest.mark.parametrize('positive_average', ['positive_proxies', 'all_proxies'])
def test_positive_average_follows_its_formula(positive_average):
    x, proxies = torch.randn(12, 8), torch.randn(5, 8)
    labels = torch.tensor([0, 0, 1, 3] * 3)  # proxies 2 and 4 have no positive
    ours = ProxyAnchorLoss(alpha=4., margin=0.1, positive_average=positive_average)(
        x, proxies, labels)
    expected = naive_proxy_anchor(x, proxies, labels, 4., 0.1,
                                  positive_average == 'all_proxies')
    torch.testing.assert_close(ours, expected)


def test_authors_proxy_scale_is_alpha_160_margin_0_02():
    """The release's proxies x5 with alpha 32 / delta 0.1 is alpha 160 / delta 0.02."""
    x, proxies = torch.randn(10, 8), torch.randn(4, 8)
    labels = torch.tensor([0, 1, 1, 2, 0, 1, 2, 2, 0, 1])
    authors = naive_proxy_anchor(x.double(), proxies.double(), labels, 32., 0.1, True,
                                 proxy_scale=5.)
    ours = ProxyAnchorLoss(alpha=160., margin=0.02, positive_average='all_proxies')(
        x.double(), proxies.double(), labels)
    torch.testing.assert_close(ours.double(), authors, rtol=1e-5, atol=1e-5)


def test_unknown_positive_average_is_a_clear_error():
    with pytest.raises(ValueError, match="positive_average='mean' is not one of"):
        ProxyAnchorLoss(positive_average='mean')


# ------------------------------------------------------------- gradient-share analysis
def _batches(count=2):
    for _ in range(count):
        yield dict(inputs=[torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
                           for _ in range(3)],
                   data_samples=make_data_samples(one_class_labels()))


@pytest.mark.parametrize('detach_data', [False, True])
def test_gradient_shares_separate_the_losses_by_path(detach_data):
    from harness.guidance_gradients import guidance_gradient_shares
    torch.manual_seed(0)
    model = build(detach_data=detach_data).train()
    shares = {s.name: s for s in guidance_gradient_shares(model, _batches())}
    assert list(shares) == ['prompts.0', 'prompts.1', 'prompts.2', 'prompts.3']
    assert all(s.segmentation > 0 for s in shares.values())
    # The guided block (2) learns from both metric losses; the block after it never does.
    assert shares['prompts.2'].token > 0 and shares['prompts.2'].cls > 0
    assert shares['prompts.3'].token == shares['prompts.3'].cls == 0
    for earlier in ('prompts.0', 'prompts.1'):
        reached = shares[earlier].token > 0 and shares[earlier].cls > 0
        assert reached != detach_data
        assert -1 <= shares[earlier].cosine <= 1 if reached else \
            shares[earlier].cosine != shares[earlier].cosine  # nan: no metric gradient


def test_gradient_shares_need_metric_losses():
    from harness.guidance_gradients import guidance_gradient_shares
    model = build(tiny_backbone(tuning_mode='vpt-deep')).train()
    with pytest.raises(ValueError, match='returns no'):
        guidance_gradient_shares(model, _batches(1))
