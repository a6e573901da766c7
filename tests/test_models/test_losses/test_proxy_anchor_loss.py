import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ProxyAnchorLoss as ReferenceProxyAnchorLoss

from davpt_seg.models.losses import ProxyAnchorLoss
from tests.helpers.precision import AUTOCAST_TOLERANCE, cpu_autocast_dtypes


def reference_loss(embeddings, proxies, labels, alpha, margin):
    reference = ReferenceProxyAnchorLoss(proxies.shape[0], proxies.shape[1], margin=margin,
                                         alpha=alpha)
    reference.proxies.data.copy_(proxies)
    return reference(embeddings, labels)


@pytest.mark.parametrize('alpha,margin', [(32., 0.1), (10., 0.3)])
def test_matches_pytorch_metric_learning(alpha, margin):
    embeddings, proxies = torch.randn(24, 16), torch.randn(7, 16)
    # Labels cover only 4 of the 7 proxies: proxies without positives must be handled.
    labels = torch.randint(0, 4, (24, ))
    ours = ProxyAnchorLoss(alpha=alpha, margin=margin)(embeddings, proxies, labels)
    expected = reference_loss(embeddings, proxies, labels, alpha, margin)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_gradients_are_finite_and_reach_both_sides():
    embeddings = torch.randn(5, 8, requires_grad=True)
    proxies = torch.randn(6, 8, requires_grad=True)
    # One proxy with all five positives, several proxies with neither positives nor
    # gradient-free masked columns: the masked logsumexp must not produce NaN gradients.
    loss = ProxyAnchorLoss()(embeddings, proxies, torch.zeros(5, dtype=torch.long))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(embeddings.grad).all() and embeddings.grad.abs().sum() > 0
    assert torch.isfinite(proxies.grad).all() and proxies.grad.abs().sum() > 0


def test_no_overflow_at_large_alpha():
    embeddings = torch.randn(4, 8)
    proxies = embeddings.clone()  # similarity 1 → exp(alpha * 1.1) would overflow float16
    loss = ProxyAnchorLoss(alpha=1000.)(embeddings.half(), proxies.half(), torch.arange(4))
    assert torch.isfinite(loss)


def test_empty_batch_gives_zero_connected_to_proxies():
    proxies = torch.randn(3, 8, requires_grad=True)
    loss = ProxyAnchorLoss()(torch.zeros(0, 8), proxies, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.
    loss.backward()
    assert torch.equal(proxies.grad, torch.zeros_like(proxies))


def test_bad_labels_are_an_error_unless_their_embedding_is_invalid():
    embeddings, proxies, labels = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 3, -1])
    with pytest.raises(RuntimeError, match=r'label outside \[0, 3\), the indices of the 3 '
                       r'proxies: pass labels in that range, or mark the embedding invalid'):
        ProxyAnchorLoss()(embeddings, proxies, labels)
    with pytest.raises(RuntimeError, match=r'label outside \[0, 3\)'):
        ProxyAnchorLoss()(embeddings, proxies, labels, torch.tensor([True, False, True]))
    loss = ProxyAnchorLoss()(embeddings, proxies, labels, torch.tensor([True, False, False]))
    assert torch.isfinite(loss)


def formula_of_davpt_seg_0_2(embeddings, proxies, labels, valid, alpha, margin,
                             positive_average):
    """ProxyAnchorLoss.forward of davpt-seg 0.2 (before the autocast and gather changes),
    verbatim: the seeded fp32 studies were run with it."""
    num_proxies = proxies.shape[0]
    similarity = F.normalize(embeddings.float(), dim=-1) @ \
        F.normalize(proxies.float(), dim=-1).t()
    label_hot = F.one_hot(labels.clamp(0, num_proxies - 1), num_proxies).bool()
    positive = label_hot & valid[:, None]
    negative = ~label_hot & valid[:, None]

    def log_one_plus_sum_exp(logits, mask):
        masked = logits.masked_fill(~mask, float('-inf'))
        zero_row = logits.new_zeros(1, logits.shape[1])
        return torch.logsumexp(torch.cat([zero_row, masked], dim=0), dim=0)

    pos_terms = log_one_plus_sum_exp(-alpha * (similarity - margin), positive)
    neg_terms = log_one_plus_sum_exp(alpha * (similarity + margin), negative)
    if positive_average == 'positive_proxies':
        num_positive_terms = positive.any(dim=0).sum().clamp(min=1)
    else:
        num_positive_terms = num_proxies
    return pos_terms.sum() / num_positive_terms + neg_terms.sum() / num_proxies


def loss_and_gradients(loss_fn, embeddings, proxies, *args, autocast_dtype=None):
    """The loss and its gradients; the forward under CPU autocast to ``autocast_dtype``
    (the backward outside it, as mmengine's AmpOptimWrapper runs them)."""
    embeddings = embeddings.clone().requires_grad_()
    proxies = proxies.clone().requires_grad_()
    with torch.autocast('cpu', dtype=autocast_dtype or torch.bfloat16,
                        enabled=autocast_dtype is not None):
        loss = loss_fn(embeddings, proxies, *args)
    loss.backward()
    return loss.detach(), embeddings.grad, proxies.grad


@pytest.mark.parametrize('positive_average', ['positive_proxies', 'all_proxies'])
def test_float32_values_and_gradients_are_those_of_davpt_seg_0_2(positive_average):
    """Bit for bit: fp32 single-process training draws the same numbers as before."""
    embeddings, proxies = torch.randn(40, 16), torch.randn(5, 16)
    labels, valid = torch.randint(0, 5, (40, )), torch.rand(40) < 0.3
    loss = ProxyAnchorLoss(positive_average=positive_average, loss_weight=0.05)
    ours = loss_and_gradients(loss, embeddings, proxies, labels, valid)
    expected = loss_and_gradients(
        lambda e, p, *args: 0.05 * formula_of_davpt_seg_0_2(e, p, *args, 32., 0.1,
                                                            positive_average),
        embeddings, proxies, labels, valid)
    for got, want in zip(ours, expected):
        assert torch.equal(got, want)


@pytest.mark.parametrize('dtype', cpu_autocast_dtypes())
def test_autocast_leaves_loss_and_gradients_at_float32(dtype):
    embeddings, proxies = torch.randn(32, 64), torch.randn(6, 64)
    labels, valid = torch.randint(0, 6, (32, )), torch.rand(32) < 0.5
    loss = ProxyAnchorLoss()
    expected = loss_and_gradients(loss, embeddings, proxies, labels, valid)
    got = loss_and_gradients(loss, embeddings, proxies, labels, valid, autocast_dtype=dtype)
    for name, value, want in zip(('loss', 'embedding grad', 'proxy grad'), got, expected):
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, want, **AUTOCAST_TOLERANCE, msg=name)


def test_gathering_across_ranks_changes_nothing_in_one_process():
    embeddings, proxies = torch.randn(12, 8), torch.randn(4, 8)
    labels, valid = torch.randint(0, 4, (12, )), torch.rand(12) < 0.5
    gathered = loss_and_gradients(ProxyAnchorLoss(gather_across_ranks=True), embeddings,
                                  proxies, labels, valid)
    local = loss_and_gradients(ProxyAnchorLoss(gather_across_ranks=False), embeddings,
                               proxies, labels, valid)
    for got, want in zip(gathered, local):
        assert torch.equal(got, want)


def test_is_registered_for_configs():
    from mmseg.registry import MODELS
    loss = MODELS.build(dict(type='ProxyAnchorLoss', alpha=16., margin=0.2))
    assert isinstance(loss, ProxyAnchorLoss) and loss.alpha == 16. and loss.margin == 0.2
    assert loss.gather_across_ranks, 'the paper\'s loss is over the global batch'
