"""Clothing Co-Parsing as a first-class dataset: the converter from the original release
(.mat labels), ClothingCoParsingDataset, its config base and the data checks."""
import os
import os.path as osp
import re
import runpy

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

from davpt_seg.datasets import CCP_CLASSES, CCP_PALETTE, DatasetError, check_data_cfg
from tests.helpers import ROOT

CONVERTER = osp.join(ROOT, 'tools', 'dataset_converters', 'ccp.py')
CCP_BASE = osp.join(ROOT, 'configs', '_base_', 'datasets', 'ccp.py')


def _converter():
    return runpy.run_path(CONVERTER)


def make_ccp_release(root: str, count: int = 5, size=(20, 30), names=CCP_CLASSES, seed=0):
    """The release's layout: photos/NNNN.jpg, annotations/pixel-level/NNNN.mat
    (`groundtruth`, doubles as MATLAB stores them), label_list.mat (a cell of names)."""
    from scipy.io import savemat
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, 'photos'))
    os.makedirs(osp.join(root, 'annotations', 'pixel-level'))
    savemat(osp.join(root, 'label_list.mat'),
            {'label_list': np.array([list(names)], dtype=object)})
    for number in range(1, count + 1):
        label = rng.integers(0, len(CCP_CLASSES), (size[1], size[0]))
        label[:2, :2] = 0  # some background in every photo, at any scale down to 1/2
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
            osp.join(root, 'photos', f'{number:04d}.jpg'))
        savemat(osp.join(root, 'annotations', 'pixel-level', f'{number:04d}.mat'),
                {'groundtruth': label.astype(np.float64)})
    return root


def test_converter_writes_the_layout_at_the_scale_asked(tmp_path):
    src = make_ccp_release(str(tmp_path / 'release'))
    out = str(tmp_path / 'ccp')
    _converter()['main']([src, '-o', out, '--split', 'train=1-3', 'val=4,5', '--scale', '0.5'])
    assert sorted(os.listdir(osp.join(out, 'img_dir', 'train'))) == \
        ['0001.jpg', '0002.jpg', '0003.jpg']
    assert sorted(os.listdir(osp.join(out, 'ann_dir', 'val'))) == ['0004.png', '0005.png']
    from scipy.io import loadmat
    original = loadmat(osp.join(src, 'annotations', 'pixel-level', '0004.mat'))['groundtruth']
    label = np.array(Image.open(osp.join(out, 'ann_dir', 'val', '0004.png')))
    assert label.shape == (15, 10) and label.dtype == np.uint8
    # nearest-neighbour halving keeps class indices (no blends of two classes)
    assert set(np.unique(label)) <= set(np.unique(original).astype(int))
    assert Image.open(osp.join(out, 'img_dir', 'val', '0004.jpg')).size == (10, 15)


def test_converter_at_full_scale_keeps_the_labels_exact(tmp_path):
    src = make_ccp_release(str(tmp_path / 'release'), count=2)
    out = str(tmp_path / 'ccp')
    _converter()['main']([src, '-o', out, '--split', 'train=1-2', '--scale', '1'])
    from scipy.io import loadmat
    for number in (1, 2):
        original = loadmat(osp.join(src, 'annotations', 'pixel-level',
                                    f'{number:04d}.mat'))['groundtruth']
        converted = np.array(Image.open(osp.join(out, 'ann_dir', 'train', f'{number:04d}.png')))
        np.testing.assert_array_equal(converted, original.astype(np.uint8))


@pytest.mark.parametrize('problem,args,match', [
    ('names', [], r'lists 59 classes .* not the 59 of ClothingCoParsingDataset'),
    ('overlap', ['--split', 'train=1-3', 'val=3-5'], r'photo 3 is in both split'),
    ('missing', ['--split', 'train=1-9'], r'0006.jpg does not exist'),
    ('values', [], r'groundtruth holds values outside the classes 0..58'),
])
def test_converter_errors_name_the_problem(tmp_path, capsys, problem, args, match):
    names = list(CCP_CLASSES)
    if problem == 'names':
        names[1], names[2] = names[2], names[1]
    src = make_ccp_release(str(tmp_path / 'release'), names=names)
    if problem == 'values':
        from scipy.io import savemat
        savemat(osp.join(src, 'annotations', 'pixel-level', '0002.mat'),
                {'groundtruth': np.full((30, 20), 60.)})
    with pytest.raises(SystemExit) as error:
        _converter()['main']([src, '-o', str(tmp_path / 'out'), *args])
    assert isinstance(error.value.code, str)  # a message, not a traceback
    assert re.search(match, error.value.code), error.value.code


def test_dataset_class_names_palette_and_config_base(tmp_path):
    assert len(CCP_CLASSES) == len(CCP_PALETTE) == 59 and CCP_CLASSES[0] == 'null'
    assert len({tuple(c) for c in CCP_PALETTE}) == 59
    src = make_ccp_release(str(tmp_path / 'release'), count=4)
    out = str(tmp_path / 'ccp')
    _converter()['main']([src, '-o', out, '--split', 'train=1-2', 'val=3-4'])
    from mmseg.registry import DATASETS
    cfg = Config.fromfile(CCP_BASE)
    dataset_cfg = dict(cfg.val_dataloader.dataset, data_root=out)
    dataset = DATASETS.build(dataset_cfg)
    assert len(dataset) == 2 and dataset.metainfo['classes'] == CCP_CLASSES
    sample = dataset[0]
    labels = sample['data_samples'].gt_sem_seg.data
    assert 0 <= labels.min() and labels.max() < 59 and (labels == 0).any()  # 0 is a class


def test_data_checks_name_a_missing_ccp_root_and_how_to_prepare(tmp_path):
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'ccp', 'setr_pup_dinov2-s14_davpt_ccp.py'))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = str(tmp_path / 'nope')
    with pytest.raises(DatasetError, match=r'tools/dataset_converters/ccp.py'):
        check_data_cfg(cfg, ('train', ))
