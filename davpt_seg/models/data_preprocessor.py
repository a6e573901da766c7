"""mmseg's data preprocessor with fewer waits and fewer kernels per training batch.

mmseg's ``SegDataPreProcessor`` copies every image and label map with a blocking
``.to(device)`` (the label maps, int64, are 2 MB per 512x512 image) and channel-swaps, casts,
normalises and pads each image on its own: a few kernels per image, sixteen images a step
in the one-GPU recipe. Under mmengine's RuntimeInfoHook the device idles through all of it,
as the host has just waited for the previous step (see AsyncRuntimeInfoHook).
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmseg.models.data_preprocessor import SegDataPreProcessor
from mmseg.registry import MODELS

from ..datasets.collate import LABEL_FIELDS


@MODELS.register_module()
class FastSegDataPreProcessor(SegDataPreProcessor):
    """``SegDataPreProcessor`` with the same arguments and the same output, to the bit.

    - Copies to the device do not block (``non_blocking``): from a loader with
      ``pin_memory=True`` the images' copies run asynchronously; the device orders every
      copy before the kernels that read it.
    - A training batch is stacked on the device first and then channel-swapped, cast and
      normalised as one tensor; only the images that need padding are padded one by one.

    Inference (``training=False``) is mmseg's path unchanged. Integer label maps narrower
    than int64 (``compact_label_collate`` sends uint8) come out int64, as mmseg's
    ``PackSegInputs`` makes them.

    Args:
        non_blocking: copy to the device without waiting.
        pinned_staging: on a CUDA device, put each training batch together (padded) in a
            pinned host buffer kept per field and copy it in one transfer. Off by default:
            on one H200 with the one-GPU recipe (8 loader workers) the host's copies into
            the buffer took 280-345 ms per step, the whole step without it 146 ms
            (docs/benchmarks.md).
    """

    def __init__(self, *args, non_blocking: bool = True, pinned_staging: bool = False,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._non_blocking = non_blocking
        self.pinned_staging = pinned_staging
        self._staging = {}  # key -> (pinned buffer, event after its last copy out)

    def forward(self, data: dict, training: bool = False) -> dict:
        paddings = self._paddings(data) if training else None
        if paddings is None:
            return super().forward(data, training)
        images, samples = data['inputs'], data['data_samples']
        batch = self._batch_on_device('inputs', images, paddings, fill=0)
        if self.channel_conversion and batch.size(1) == 3:
            batch = batch[:, [2, 1, 0], ...]
        batch = batch.float()
        if self._enable_normalize:
            batch = (batch - self.mean) / self.std
        # mmseg pads after normalising: the padded pixels are pad_val itself.
        for index, (image, (_, right, _, bottom)) in enumerate(zip(images, paddings)):
            height, width = image.shape[-2:]
            if bottom:
                batch[index, :, height:, :] = self.pad_val
            if right:
                batch[index, :, :height, width:] = self.pad_val
        for field in LABEL_FIELDS:
            if field in samples[0]:
                label_maps = self._batch_on_device(
                    field, [sample.get(field).data for sample in samples], paddings,
                    fill=self.seg_pad_val, to_int64=True)
                # Views of one tensor: the heads stack them again for the loss.
                for sample, label_map in zip(samples, label_maps):
                    element = sample.get(field)
                    del element.data
                    element.data = label_map
        samples = self.cast_data(samples)  # what else they hold; the label maps are there
        for image, sample, padding in zip(images, samples, paddings):
            pad_shape = None
            for field in LABEL_FIELDS:
                if field in sample:
                    pad_shape = sample.get(field).shape
            sample.set_metainfo({'img_shape': image.shape[-2:], 'pad_shape': pad_shape,
                                 'padding_size': padding})
        if self.batch_augments is not None:
            batch, samples = self.batch_augments(batch, samples)
        return dict(inputs=batch, data_samples=samples)

    def _batch_on_device(self, key: str, tensors: List[torch.Tensor],
                         paddings: List[Tuple[int, int, int, int]], fill,
                         to_int64: bool = False) -> torch.Tensor:
        """The (C, H, W) tensors padded with ``fill`` (stack_batch's bottom-right padding) as
        one (N, C, H, W) tensor on the device: each copied on its own and stacked there, or,
        with ``pinned_staging``, put together in the pinned buffer kept for ``key`` and
        copied in one asynchronous transfer (allocated once, reused once its last copy out
        has finished). ``to_int64``: integer maps narrower than int64 (compact_label_collate's)
        are widened on the device, before padding, so any ``fill`` is exact."""
        first, (_, right, _, bottom) = tensors[0], paddings[0]
        widen = to_int64 and first.dtype != torch.int64 and not first.is_floating_point()
        shape = (len(tensors), first.shape[0], first.shape[-2] + bottom,
                 first.shape[-1] + right)
        stage = self.pinned_staging and self.device.type == 'cuda' and \
            all(t.device.type == 'cpu' for t in tensors)
        if not stage:
            moved = [t.to(self.device, non_blocking=self._non_blocking) for t in tensors]
            if widen:
                moved = [t.long() for t in moved]
            return torch.stack([F.pad(t, padding, value=fill) if any(padding) else t
                                for t, padding in zip(moved, paddings)])
        # Staged narrow maps are padded in their own dtype, so the fill must fit in it.
        dtype = torch.int64 if widen and not _fits(fill, first.dtype) else first.dtype
        buffer, copied = self._staging.get(key, (None, None))
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
            buffer = torch.empty(shape, dtype=dtype, pin_memory=True)
        elif copied is not None:
            copied.synchronize()  # the previous batch has left the buffer (long ago, as a rule)
        for slot, tensor, padding in zip(buffer, tensors, paddings):
            if any(padding):
                slot.fill_(fill)
            slot[:, :tensor.shape[-2], :tensor.shape[-1]].copy_(tensor)
        batch = buffer.to(self.device, non_blocking=self._non_blocking)
        copied = torch.cuda.Event()
        copied.record()
        self._staging[key] = (buffer, copied)
        return batch.long() if widen else batch

    def _paddings(self, data: dict) -> Optional[List[Tuple[int, int, int, int]]]:
        """stack_batch's (left, right, top, bottom) padding of every image, where the
        stacked path computes what mmseg's does; None sends the batch down mmseg's path
        (and to its checks and messages)."""
        images, samples = data.get('inputs'), data.get('data_samples')
        if not isinstance(images, Sequence) or not images or samples is None or \
                len(samples) != len(images):
            return None
        if (self.size is None) == (self.size_divisor is None):
            return None
        first = images[0]
        if any(not isinstance(image, torch.Tensor) or image.ndim != 3 or
               image.shape[0] != first.shape[0] or image.dtype != first.dtype
               for image in images):
            return None
        # Each sample's label maps have its image's size, as stack_batch pads them alike.
        for field in LABEL_FIELDS:
            present = [field in sample for sample in samples]
            if any(present) and not all(present):
                return None
            if present[0] and any(
                    tuple(sample.get(field).data.shape[-2:]) != tuple(image.shape[-2:])
                    for sample, image in zip(samples, images)):
                return None
        sizes = [tuple(image.shape[-2:]) for image in images]
        if self.size is not None:
            target = tuple(self.size)
        else:
            target = tuple((max(side) + self.size_divisor - 1) // self.size_divisor *
                           self.size_divisor for side in zip(*sizes))
        paddings = [(0, max(target[-1] - width, 0), 0, max(target[-2] - height, 0))
                    for height, width in sizes]
        padded = {(height + bottom, width + right)
                  for (height, width), (_, right, _, bottom) in zip(sizes, paddings)}
        return paddings if len(padded) == 1 else None


def _fits(value, dtype: torch.dtype) -> bool:
    info = torch.iinfo(dtype)
    return float(value).is_integer() and info.min <= value <= info.max
