"""A collate function that sends the label maps to the device in an eighth of the bytes."""
import torch
from mmengine.dataset import pseudo_collate
from mmengine.registry import FUNCTIONS

# The pixel-level label fields of a segmentation data sample, in the order of mmseg's
# stack_batch (which pads them all with seg_pad_val; the last present gives pad_shape).
LABEL_FIELDS = ('gt_sem_seg', 'gt_edge_map', 'gt_depth_map')


@FUNCTIONS.register_module()
def compact_label_collate(data_batch):
    """mmengine's ``pseudo_collate``, with every int64 label map whose values fit in uint8
    (0-255: class indices and mmseg's ignore index 255) narrowed to uint8, here in the
    loader's worker processes.

    mmseg's ``PackSegInputs`` makes label maps int64: 2 MB per 512x512 image, 32 MB per batch
    of 16, copied to the device every step from memory the loader cannot pin.
    ``FastSegDataPreProcessor`` widens them back to int64 on the device, so the model sees
    what ``pseudo_collate`` gives; mmseg's ``SegDataPreProcessor`` does not (the losses then
    stop with a dtype error). Use both:
    ``train_dataloader = dict(collate_fn=dict(type='compact_label_collate'))``.
    """
    batch = pseudo_collate(data_batch)
    for sample in batch.get('data_samples', ()):
        for field in LABEL_FIELDS:
            if field not in sample:
                continue
            element = sample.get(field)
            data = element.data
            if data.dtype != torch.int64 or data.numel() == 0:
                continue
            low, high = torch.aminmax(data)
            if low >= 0 and high <= 255:
                del element.data
                element.data = data.to(torch.uint8)
    return batch
