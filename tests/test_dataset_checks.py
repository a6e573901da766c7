"""Missing or mismatched data stops with an error naming the path and how to prepare it."""
import os
import os.path as osp

import pytest
from mmengine.config import Config
from PIL import Image

from davpt_seg.datasets import DatasetError, check_data_cfg, check_dataset, make_ade_like_dataset

CONFIGS = osp.join(osp.dirname(__file__), '..', 'configs')


@pytest.fixture
def tiny_ade(tmp_path):
    return make_ade_like_dataset(str(tmp_path / 'ade'), num_train=3, num_val=2, size=16,
                                 num_classes=4)


def ade_cfg(root, split='training'):
    return dict(type='ADE20KDataset', data_root=root,
                data_prefix=dict(img_path=f'images/{split}',
                                 seg_map_path=f'annotations/{split}'))


def test_a_complete_dataset_passes(tiny_ade):
    assert check_dataset(ade_cfg(tiny_ade)) == 3
    assert check_dataset(ade_cfg(tiny_ade, 'validation'), 'val') == 2
    # mmengine wrappers are looked through
    assert check_dataset(dict(type='RepeatDataset', times=2, dataset=ade_cfg(tiny_ade))) == 3


def test_missing_root_names_it_and_how_to_prepare_ade20k(tmp_path):
    root = str(tmp_path / 'ade' / 'ADEChallengeData2016')
    with pytest.raises(DatasetError, match='data_root does not exist') as error:
        check_dataset(ade_cfg(root))
    assert root in str(error.value)
    assert 'ADEChallengeData2016.zip' in str(error.value)
    assert 'docs/datasets.md' in str(error.value)


def test_missing_split_names_the_folder(tiny_ade):
    os.rename(osp.join(tiny_ade, 'annotations', 'validation'),
              osp.join(tiny_ade, 'annotations', 'gone'))
    with pytest.raises(DatasetError, match='seg_map_path folder does not exist') as error:
        check_dataset(ade_cfg(tiny_ade, 'validation'), 'val')
    assert osp.join(tiny_ade, 'annotations', 'validation') in str(error.value)
    assert str(error.value).startswith('val dataset (ADE20KDataset)')


def test_missing_label_file_names_the_image(tiny_ade):
    label = osp.join(tiny_ade, 'annotations', 'training', 'synthetic_training_00001.png')
    os.remove(label)
    with pytest.raises(DatasetError, match='has no label file') as error:
        check_dataset(ade_cfg(tiny_ade))
    assert label in str(error.value) and 'synthetic_training_00001.jpg' in str(error.value)
    # Opting out of the per-sample pass still checks the folders.
    assert check_dataset(ade_cfg(tiny_ade), check_samples=False) == 0


def test_label_of_another_size_is_rejected(tiny_ade):
    label = osp.join(tiny_ade, 'annotations', 'training', 'synthetic_training_00002.png')
    Image.open(label).resize((16, 12)).save(label)
    with pytest.raises(DatasetError, match='is 16x12 \\(WxH\\) but its image') as error:
        check_dataset(ade_cfg(tiny_ade))
    assert label in str(error.value)


def test_pascal_context_missing_split_list_says_how_to_convert(tmp_path):
    root = tmp_path / 'VOC2010'
    (root / 'JPEGImages').mkdir(parents=True)
    (root / 'SegmentationClassContext').mkdir()
    cfg = Config.fromfile(osp.join(CONFIGS, 'setr_pup_davpt_pascal_context.py'))
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.data_root = str(root)
    with pytest.raises(DatasetError, match='ann_file') as error:
        check_data_cfg(cfg)
    message = str(error.value)
    assert osp.join(str(root), 'ImageSets/SegmentationContext/train.txt') in message
    assert 'tools/dataset_converters/pascal_context.py' in message
    assert 'trainval_merged.json' in message


def test_our_configs_point_at_mmseg_default_roots():
    """A fresh checkout without data fails on the documented default location."""
    for name, root in (('setr_pup_davpt_ade20k', 'data/ade/ADEChallengeData2016'),
                       ('setr_pup_davpt_pascal_context_59', 'data/VOCdevkit/VOC2010/')):
        cfg = Config.fromfile(osp.join(CONFIGS, name + '.py'))
        assert cfg.train_dataloader.dataset.data_root == root
        if not osp.isdir(root):
            with pytest.raises(DatasetError, match=root.rstrip('/')):
                check_data_cfg(cfg, ('train', ))
