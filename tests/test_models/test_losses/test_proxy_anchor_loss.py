import pytest
import torch
from pytorch_metric_learning.losses import ProxyAnchorLoss as ReferenceProxyAnchorLoss

from davpt_seg.models.losses import ProxyAnchorLoss


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


def test_bad_labels_are_an_error():
    with pytest.raises(ValueError, match='labels must lie in'):
        ProxyAnchorLoss()(torch.randn(2, 4), torch.randn(3, 4), torch.tensor([0, 3]))


def test_is_registered_for_configs():
    from mmseg.registry import MODELS
    loss = MODELS.build(dict(type='ProxyAnchorLoss', alpha=16., margin=0.2))
    assert isinstance(loss, ProxyAnchorLoss) and loss.alpha == 16. and loss.margin == 0.2
