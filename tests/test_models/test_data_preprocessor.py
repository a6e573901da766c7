"""FastSegDataPreProcessor against mmseg's SegDataPreProcessor: same output, to the bit."""
import copy

import pytest
import torch
from mmengine.structures import PixelData
from mmseg.models.data_preprocessor import SegDataPreProcessor
from mmseg.structures import SegDataSample

from davpt_seg.models import FastSegDataPreProcessor

ARGS = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
            pad_val=0, seg_pad_val=255)


def _batch(sizes, seed=0, edge=False):
    gen = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for height, width in sizes:
        inputs.append(torch.randint(0, 256, (3, height, width), generator=gen,
                                    dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(ori_shape=(height, width)))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, 150, (1, height, width), generator=gen))
        if edge:
            sample.set_data(dict(gt_edge_map=PixelData(
                data=torch.randint(0, 2, (1, height, width), generator=gen))))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def _both(data, training=True, **kwargs):
    args = dict(ARGS, **kwargs)
    expected = SegDataPreProcessor(**args)(copy.deepcopy(data), training)
    actual = FastSegDataPreProcessor(**args)(copy.deepcopy(data), training)
    return expected, actual


def _assert_same(expected, actual):
    assert actual['inputs'].dtype == expected['inputs'].dtype
    assert torch.equal(actual['inputs'], expected['inputs'])
    for want, got in zip(expected['data_samples'], actual['data_samples']):
        assert got.metainfo.keys() == want.metainfo.keys()
        for key, value in want.metainfo.items():
            assert tuple(got.metainfo[key]) == tuple(value) if value is not None \
                else got.metainfo[key] is None, key
        for field in ('gt_sem_seg', 'gt_edge_map'):
            if field in want:
                assert got.get(field).data.dtype == want.get(field).data.dtype
                assert torch.equal(got.get(field).data, want.get(field).data), field


@pytest.mark.parametrize('sizes,kwargs', [
    ([(16, 16)] * 3, dict(size=(16, 16))),                     # nothing to pad
    ([(16, 16), (9, 16), (16, 5), (7, 11)], dict(size=(16, 16))),  # crops under the size
    ([(12, 10), (9, 13)], dict(size_divisor=8)),
    ([(16, 16), (10, 12)], dict(size=(16, 16), pad_val=-1.5, seg_pad_val=7,
                                bgr_to_rgb=False)),
])
def test_training_batches_equal_mmseg_to_the_bit(sizes, kwargs):
    _assert_same(*_both(_batch(sizes), **kwargs))


def test_every_label_field_is_padded_like_mmseg():
    _assert_same(*_both(_batch([(16, 16), (11, 9)], edge=True), size=(16, 16)))


def test_batches_the_stacked_path_cannot_take_go_down_mmsegs_path():
    # An image over the fixed size: mmseg leaves it unpadded and its stack fails.
    data = _batch([(16, 16), (20, 16)])
    with pytest.raises(RuntimeError, match='stack expects each tensor to be equal size'):
        FastSegDataPreProcessor(**ARGS, size=(16, 16))(data, True)
    # A label map of another size than its image: mmseg's padding, not ours.
    data = _batch([(16, 16), (12, 16)])
    data['data_samples'][1].gt_sem_seg = PixelData(data=torch.zeros(1, 14, 16).long())
    _assert_same(*_both(data, size=(16, 16)))


def test_inference_is_mmsegs_path():
    data = _batch([(16, 16), (16, 16)])
    expected, actual = _both(data, training=False, size=(16, 16))
    assert torch.equal(actual['inputs'], expected['inputs'])


def test_copies_do_not_block_unless_asked():
    assert FastSegDataPreProcessor(**ARGS, size=(8, 8))._non_blocking
    assert not FastSegDataPreProcessor(**ARGS, size=(8, 8), non_blocking=False)._non_blocking


@pytest.mark.parametrize('seg_pad_val', [255, 300])
def test_compact_label_collate_then_the_preprocessor_equal_mmseg(seg_pad_val):
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import FUNCTIONS

    from davpt_seg.datasets import compact_label_collate
    assert FUNCTIONS.get('compact_label_collate') is compact_label_collate
    data = _batch([(16, 16), (9, 16)], edge=True)
    items = [dict(inputs=image, data_samples=sample)
             for image, sample in zip(data['inputs'], data['data_samples'])]
    items[0]['data_samples'].gt_sem_seg.data[0, 0, :3] = 255  # mmseg's ignore index
    compact = compact_label_collate(copy.deepcopy(items))
    assert all(s.gt_sem_seg.data.dtype == torch.uint8 and s.gt_edge_map.data.dtype ==
               torch.uint8 for s in compact['data_samples'])
    args = dict(ARGS, size=(16, 16), seg_pad_val=seg_pad_val)
    expected = SegDataPreProcessor(**args)(pseudo_collate(copy.deepcopy(items)), True)
    _assert_same(expected, FastSegDataPreProcessor(**args)(compact, True))


def test_compact_label_collate_keeps_maps_that_do_not_fit_in_uint8():
    from davpt_seg.datasets import compact_label_collate
    data = _batch([(8, 8), (8, 8)])
    data['data_samples'][1].gt_sem_seg.data[0, 0, 0] = 256
    data['data_samples'][0].gt_sem_seg.data[0, 0, 0] = -1
    batch = compact_label_collate([dict(inputs=i, data_samples=s)
                                   for i, s in zip(data['inputs'], data['data_samples'])])
    assert [s.gt_sem_seg.data.dtype for s in batch['data_samples']] == [torch.int64] * 2
