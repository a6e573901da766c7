"""mmseg's SETR-PUP head, computed with fewer passes over full-resolution maps.

On one H200 (ViT-L/16, 512x512, batch 16, bf16; docs/benchmarks.md) the trunk's matrix
products took about 50 ms of a 445 ms DA-VPT training step; the SETR-PUP decode head and
its three auxiliary heads took most of the rest, in memory-bound work at 512x512:
mmseg's accuracy metric (``topk`` over the class axis: 127 ms), the backward of bilinear
upsampling (torch accumulates it with atomics: 60 ms), the 1x1 classifier over a
256-channel full-resolution map, and a same-size "resize" of the logits before the loss.
:class:`FastSETRUPHead` computes the same function without them.
"""
import functools
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.models.decode_heads import SETRUPHead
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from mmseg.utils import SampleList


# Integer factors whose bilinear weights (multiples of 1 / (2 * factor)) every float dtype
# holds exactly: a product with them is torch's interpolation, in bf16 as in fp32.
EXACT_FACTORS = (2, 4, 8)


def interpolation_matrix(size_in: int, size_out: int, dtype: torch.dtype,
                         device: torch.device) -> torch.Tensor:
    """(size_out, size_in): torch's 1-D linear interpolation weights of ``upsample_bilinear2d``
    with ``align_corners=False`` and the output size given (``area_pixel_compute_source_index``).

    Tensor ops on constants: under ``torch.compile`` the matrix folds into the graph."""
    dst = torch.arange(size_out, dtype=torch.float64, device=device)
    src = ((dst + 0.5) * (size_in / size_out) - 0.5).clamp(min=0)
    low = src.floor().long().clamp(max=size_in - 1)
    high = (low + 1).clamp(max=size_in - 1)
    frac = (src - low).unsqueeze(1)
    columns = torch.arange(size_in, device=device)
    matrix = (columns == low.unsqueeze(1)) * (1 - frac) + (columns == high.unsqueeze(1)) * frac
    return matrix.to(dtype)


@functools.lru_cache(maxsize=32)
def _cached_interpolation_matrix(size_in: int, size_out: int, dtype: torch.dtype,
                                 device: torch.device) -> torch.Tensor:
    # Eager steps reuse the matrices (a dozen small kernels each, 14 upsamplings a step).
    # A normal tensor even when first made under inference_mode: training uses it too.
    with torch.inference_mode(False):
        return interpolation_matrix(size_in, size_out, dtype, device)


def bilinear_upsample(x: torch.Tensor, size: Tuple[int, int], align_corners: bool
                      ) -> torch.Tensor:
    """``F.interpolate(x, size, mode='bilinear', align_corners=...)`` of an NCHW map as two
    products with interpolation matrices (width, then height).

    The same weighted sums as torch's kernel, but forward and backward are matrix products:
    torch's backward scatters every output gradient into four inputs with atomic adds, the
    slowest part of a SETR-PUP training step. Products compute in the dtype autocast gives
    them (accumulating in fp32), so the weights must be exact in it: they are for the
    factors of ``EXACT_FACTORS`` without ``align_corners``; anything else takes
    ``F.interpolate``. An fp32 map on a GPU with TF32 on is multiplied in TF32, as every
    other matrix product of the model then is.
    """
    height, width = x.shape[-2:]
    if align_corners or size[0] not in [height * f for f in EXACT_FACTORS] or \
            size[1] not in [width * f for f in EXACT_FACTORS]:
        return F.interpolate(x, size, mode='bilinear', align_corners=align_corners)
    dtype = torch.get_autocast_dtype(x.device.type) \
        if torch.is_autocast_enabled(x.device.type) else x.dtype
    # A compiled graph folds the matrices in; dynamo would only trace through the cache.
    matrix = interpolation_matrix if torch.compiler.is_compiling() else \
        _cached_interpolation_matrix
    rows = matrix(height, size[0], dtype, x.device)
    cols = matrix(width, size[1], dtype, x.device)
    return rows @ (x @ cols.t())


class SyncFreeLossMixin:
    """``BaseDecodeHead.loss_by_feat`` with the same losses and ``acc_seg``, without two
    full-resolution passes and without host-device syncs: logits that already have the
    labels' size are not resized (mmseg interpolates them onto the same grid, a copy
    forward and backward), and the accuracy uses :func:`top1_accuracy`.

    The tensor work is :meth:`loss_by_labels` (what ``compile_regions`` compiles): the data
    samples stay outside, so that the compiled graph sees one contiguous label tensor
    rather than guarding on every sample's own tensor and strides."""

    def loss_by_feat(self, seg_logits: torch.Tensor,
                     batch_data_samples: SampleList) -> dict:
        return self.loss_by_labels(seg_logits, self._stack_batch_gt(batch_data_samples))

    def loss_by_labels(self, seg_logits: torch.Tensor, seg_label: torch.Tensor) -> dict:
        """The losses of ``seg_logits`` (B, C, h, w) against ``seg_label`` (B, 1, H, W)."""
        if seg_logits.shape[2:] != seg_label.shape[2:]:
            seg_logits = resize(input=seg_logits, size=seg_label.shape[2:], mode='bilinear',
                                align_corners=self.align_corners)
        seg_weight = None if self.sampler is None else \
            self.sampler.sample(seg_logits, seg_label)
        seg_label = seg_label.squeeze(1)
        losses = {}
        losses_decode = self.loss_decode if isinstance(self.loss_decode, nn.ModuleList) \
            else [self.loss_decode]
        for loss_decode in losses_decode:
            value = loss_decode(seg_logits, seg_label, weight=seg_weight,
                                ignore_index=self.ignore_index)
            name = loss_decode.loss_name
            losses[name] = losses[name] + value if name in losses else value
        losses['acc_seg'] = top1_accuracy(seg_logits, seg_label, self.ignore_index)
        return losses


def top1_accuracy(pred: torch.Tensor, target: torch.Tensor,
                  ignore_index: Optional[int] = None) -> torch.Tensor:
    """mmseg's ``accuracy(pred, target, topk=1, ignore_index=...)``, bit for bit, without
    waiting for the device: ``argmax`` where mmseg takes ``topk(1)`` (which, over the class
    axis of a (B, C, H, W) map, is a slow strided selection), and masked sums where mmseg
    indexes with boolean masks (each a host-device sync)."""
    if pred.size(0) == 0:
        return pred.new_tensor(0.)
    correct = pred.argmax(dim=1) == target
    if ignore_index is not None:
        valid = target != ignore_index
        correct = correct & valid
        total = valid.sum()
    else:
        total = torch.tensor(target.numel(), device=target.device)
    eps = torch.finfo(torch.float32).eps
    # mmseg: float32 count + eps, times the float64 quotient 100 / (count + eps) rounded to
    # float32 as a scalar operand is.
    count = correct.sum().float().reshape(1) + eps
    return count * (100.0 / (total.double() + eps)).float()


@MODELS.register_module()
class FastSETRUPHead(SyncFreeLossMixin, SETRUPHead):
    """mmseg's ``SETRUPHead`` (SETR-PUP and SETR-Naive): the same arguments, parameters
    (checkpoints load either way), outputs and losses, in fewer passes over full-resolution
    maps. Besides the loss of :class:`SyncFreeLossMixin`:

    * every ``up_scale`` upsampling is :func:`bilinear_upsample` (matrix products);
    * the 1x1 classifier runs before the last upsampling, not after it. Both are linear,
      and bilinear weights sum to one, so the classifier's bias passes through: the same
      logits, in exact arithmetic, from a full-resolution map of ``num_classes`` channels
      instead of ``channels`` (150 instead of 256 in the ADE20K configs), with the 1x1
      convolution over ``1/up_scale**2`` of the pixels. A dropout between the two does not
      commute with the upsampling: with ``dropout_ratio > 0`` a training forward keeps
      mmseg's order.
    """

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self._transform_inputs(inputs)
        n, c, h, w = x.shape
        x = x.reshape(n, c, h * w).transpose(2, 1).contiguous()
        x = self.norm(x)
        x = x.transpose(1, 2).reshape(n, c, h, w).contiguous()
        classify_first = self.dropout is None or not self.training
        for index, (conv, upsample) in enumerate(self.up_convs):
            x = conv(x)
            if classify_first and index == len(self.up_convs) - 1:
                x = self.cls_seg(x)
            size = [int(t * upsample.scale_factor) for t in x.shape[-2:]]
            x = bilinear_upsample(x, size, upsample.align_corners)
        return x if classify_first and len(self.up_convs) else self.cls_seg(x)
