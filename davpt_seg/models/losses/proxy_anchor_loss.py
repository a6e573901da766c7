"""Proxy-Anchor loss (Kim et al., CVPR 2020) with arbitrary tensors as the proxies."""
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from mmseg.registry import MODELS

try:
    # Differentiable (its backward is a reduce-scatter) and traceable by torch.compile.
    from torch.distributed._functional_collectives import all_gather_single
except ImportError:  # torch releases before it: the autograd collective of their time
    all_gather_single = None

POSITIVE_AVERAGES = ('positive_proxies', 'all_proxies')


def gather_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` concatenated along dim 0 in rank order, with gradients.

    The gradient reaching a process's own slice is the sum of that slice's gradients on all
    processes. Each process must pass the same shape (mmengine's samplers give every rank
    the same batch size). Without an initialised process group of more than one process it
    returns ``tensor`` itself.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    if all_gather_single is not None:
        return all_gather_single(tensor.contiguous(), 0, dist.group.WORLD)
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(tensor, group=dist.group.WORLD))


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
        gather_across_ranks: in distributed training, compute the loss over the global
            batch: every process gathers all processes' embeddings, labels and ``valid``
            (with gradients) before the loss. Proxy-Anchor's terms couple the batch (each
            proxy's log-sum-exp runs over all its positives and negatives, and the positive
            term is averaged over the proxies with a positive in the batch), so a mean of
            per-process losses is a different loss whose value depends on the number of
            processes. The paper defines the loss over the mini-batch (16 images per
            iteration in the ADE20K config, whatever the GPU count): default ``True``. Each
            process then computes the same global loss; the gather's backward sums the
            processes' gradients into each process's embeddings and DDP averages, which
            gives every parameter exactly the global loss's gradient. A single process
            gathers nothing: the switch changes nothing there. ``False``: each process's
            loss over its own images (the mean of those is what DDP optimises).

    All arithmetic runs in float32 with autocast disabled, whatever the inputs' dtype or an
    enclosing ``torch.autocast`` (mmengine's ``AmpOptimWrapper`` runs the whole forward in
    one): the similarities feed ``exp(alpha * s)`` with ``alpha = 32``, so half-precision
    similarities (3 significant digits in bfloat16) would distort the loss and its gradient.
    """

    def __init__(self, alpha: float = 32., margin: float = 0.1,
                 positive_average: str = 'positive_proxies', loss_weight: float = 1.0,
                 loss_name: str = 'loss_proxy_anchor', gather_across_ranks: bool = True):
        super().__init__()
        if positive_average not in POSITIVE_AVERAGES:
            raise ValueError(f'positive_average={positive_average!r} is not one of '
                             f'{POSITIVE_AVERAGES}')
        self.alpha = alpha
        self.margin = margin
        self.positive_average = positive_average
        self.loss_weight = loss_weight
        self._loss_name = loss_name
        self.gather_across_ranks = gather_across_ranks

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def forward(self, embeddings: torch.Tensor, proxies: torch.Tensor, labels: torch.Tensor,
                valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """embeddings (N, D), proxies (M, D), labels (N,) in ``[0, M)`` → weighted scalar loss.

        ``valid`` (N,) bool marks the embeddings that take part (default: all); the others'
        labels are not looked at. No valid embedding gives exactly 0, with the proxies in
        the graph (distributed training then sees their zero gradient on every rank).

        A valid label outside ``[0, M)`` is an error. The check is a tensor op, so that
        training never waits for the device: on the CPU it raises at once with its message;
        on a GPU it is a device-side assert ("device-side assert triggered", raised at a
        later synchronisation), whose message the same batch on the CPU shows.
        """
        num_proxies = proxies.shape[0]
        if valid is None:
            valid = torch.ones_like(labels, dtype=torch.bool)
        out_of_range = valid & ((labels < 0) | (labels >= num_proxies))
        torch._assert_async(
            ~out_of_range.any(),
            f'ProxyAnchorLoss: a valid embedding has a label outside [0, {num_proxies}), the '
            f'indices of the {num_proxies} proxies: pass labels in that range, or mark the '
            'embedding invalid (valid=False)')
        if self.gather_across_ranks:
            embeddings = gather_across_ranks(embeddings)
            # One collective for both: labels and the valid flags side by side.
            labels, valid = gather_across_ranks(
                torch.stack([labels, valid.to(labels.dtype)], dim=1)).unbind(dim=1)
            valid = valid.bool()
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            loss = self._loss(embeddings.float(), proxies.float(), labels, valid)
        return self.loss_weight * loss

    def _loss(self, embeddings: torch.Tensor, proxies: torch.Tensor, labels: torch.Tensor,
              valid: torch.Tensor) -> torch.Tensor:
        num_proxies = proxies.shape[0]
        similarity = F.normalize(embeddings, dim=-1) @ F.normalize(proxies, dim=-1).t()
        label_hot = F.one_hot(labels.clamp(0, num_proxies - 1), num_proxies).bool()
        positive = label_hot & valid[:, None]
        negative = ~label_hot & valid[:, None]

        pos_terms = _log_one_plus_sum_exp(-self.alpha * (similarity - self.margin), positive)
        neg_terms = _log_one_plus_sum_exp(self.alpha * (similarity + self.margin), negative)
        if self.positive_average == 'positive_proxies':
            num_positive_terms = positive.any(dim=0).sum().clamp(min=1)
        else:
            num_positive_terms = num_proxies
        return pos_terms.sum() / num_positive_terms + neg_terms.sum() / num_proxies
