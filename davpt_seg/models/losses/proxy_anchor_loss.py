"""Proxy-Anchor loss (Kim et al., CVPR 2020) with arbitrary tensors as the proxies."""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.registry import MODELS

POSITIVE_AVERAGES = ('positive_proxies', 'all_proxies')


def _log_one_plus_sum_exp(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log(1 + sum_{mask} exp(logits))`` per column, stable and NaN-free.

    The ``1`` is a zero logit appended to every column, so a column with no selected entry
    gives exactly 0 with a finite (zero) gradient, where a plain masked logsumexp over an
    empty set would give ``-inf`` and NaN gradients.
    """
    masked = logits.masked_fill(~mask, float('-inf'))
    zero_row = logits.new_zeros(1, logits.shape[1])
    return torch.logsumexp(torch.cat([zero_row, masked], dim=0), dim=0)


@MODELS.register_module()
class ProxyAnchorLoss(nn.Module):
    """Pulls each embedding towards its proxy and pushes it from the others.

    ``L = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - margin)))
        + 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + margin)))``

    with ``s`` the cosine similarity, ``P+`` the proxies that have a positive in the batch.

    Args:
        alpha: scale of the similarities (32 in the paper and the official code).
        margin: the margin ``delta`` (0.1).
        positive_average: what the positive term is averaged over: ``'positive_proxies'``
            (``P+``, the paper's and Kim et al.'s formula) or ``'all_proxies'`` (``P``, the
            authors' release). The release also multiplies the normalised proxies by 5,
            which is ``alpha`` x5 and ``margin`` /5 here: ``alpha=160, margin=0.02``.
        loss_weight: the factor of the loss (DA-VPT's beta or gamma).
        loss_name: the key of the loss in the segmentor's loss dict; mmengine adds every
            key that contains ``loss`` to the total it optimises.
    """

    def __init__(self, alpha: float = 32., margin: float = 0.1,
                 positive_average: str = 'positive_proxies', loss_weight: float = 1.0,
                 loss_name: str = 'loss_proxy_anchor'):
        super().__init__()
        if positive_average not in POSITIVE_AVERAGES:
            raise ValueError(f'positive_average={positive_average!r} is not one of '
                             f'{POSITIVE_AVERAGES}')
        self.alpha = alpha
        self.margin = margin
        self.positive_average = positive_average
        self.loss_weight = loss_weight
        self._loss_name = loss_name

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def forward(self, embeddings: torch.Tensor, proxies: torch.Tensor, labels: torch.Tensor,
                valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """embeddings (N, D), proxies (M, D), labels (N,) in ``[0, M)`` → weighted scalar loss.

        ``valid`` (N,) bool marks the embeddings that take part (default: all); the others'
        labels are not looked at. No valid embedding gives exactly 0, with the proxies in
        the graph (distributed training then sees their zero gradient on every rank).
        """
        num_proxies = proxies.shape[0]
        if valid is None:
            valid = torch.ones_like(labels, dtype=torch.bool)
        checked = labels[valid] if labels.numel() else labels
        if checked.numel() and (checked.min() < 0 or checked.max() >= num_proxies):
            raise ValueError(f'labels must lie in [0, {num_proxies}), got '
                             f'[{int(checked.min())}, {int(checked.max())}]')
        similarity = F.normalize(embeddings.float(), dim=-1) @ \
            F.normalize(proxies.float(), dim=-1).t()
        label_hot = F.one_hot(labels.clamp(0, num_proxies - 1), num_proxies).bool()
        positive = label_hot & valid[:, None]
        negative = ~label_hot & valid[:, None]

        pos_terms = _log_one_plus_sum_exp(-self.alpha * (similarity - self.margin), positive)
        neg_terms = _log_one_plus_sum_exp(self.alpha * (similarity + self.margin), negative)
        if self.positive_average == 'positive_proxies':
            num_positive_terms = positive.any(dim=0).sum().clamp(min=1)
        else:
            num_positive_terms = num_proxies
        loss = pos_terms.sum() / num_positive_terms + neg_terms.sum() / num_proxies
        return self.loss_weight * loss
