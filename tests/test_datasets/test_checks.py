"""Missing or mismatched data, or label values outside the classes, stop with an error naming
the file and how to fix it."""
import os
import os.path as osp
import sys

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

from davpt_seg.datasets import DatasetError, check_data_cfg, check_dataset
from harness.synthetic import make_ade_like_dataset
from davpt_seg.datasets.checks import spread
from tests.helpers import ROOT

CONFIGS = osp.join(ROOT, 'configs')


@pytest.fixture
def tiny_ade(tmp_path):
    return make_ade_like_dataset(str(tmp_path / 'ade'), num_train=3, num_val=2, size=16,
                                 num_classes=4)


def ade_cfg(root, split='training', **overrides):
    cfg = dict(type='ADE20KDataset', data_root=root,
               data_prefix=dict(img_path=f'images/{split}',
                                seg_map_path=f'annotations/{split}'),
               pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                         dict(type='PackSegInputs')])
    cfg.update(overrides)
    return cfg


def test_a_complete_dataset_passes(tiny_ade):
    assert check_dataset(ade_cfg(tiny_ade)) == (3, 3)
    assert check_dataset(ade_cfg(tiny_ade, 'validation'), 'val') == (2, 2)
    # mmengine wrappers are looked through
    assert check_dataset(dict(type='RepeatDataset', times=2, dataset=ade_cfg(tiny_ade))) == \
        (3, 3)


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
    assert check_dataset(ade_cfg(tiny_ade), mode='off') == (0, 0)


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


# ------------------------------------------------------------------------ label values
def _label(root, index, split='training'):
    return osp.join(root, 'annotations', split, f'synthetic_{split}_{index:05d}.png')


def _set_label_value(path, value, dtype=np.uint8):
    label = np.array(Image.open(path)).astype(dtype)
    label[-1, -1] = value
    Image.fromarray(label).save(path)  # uint16: a 16-bit PNG


def _data_cfg(root, num_classes, split='train', **dataset):
    """A config with a decode head and one split, as the tools check it."""
    prefix = 'training' if split == 'train' else 'validation'
    return Config(dict(model=dict(decode_head=dict(type='FCNHead', num_classes=num_classes)),
                       **{f'{split}_dataloader': dict(dataset=ade_cfg(root, prefix,
                                                                        **dataset))}))


def test_ade20k_without_reduce_zero_label_names_file_value_and_fix(tiny_ade):
    # ADE20K's raw labels are 0..150 with 0 = "other": 150 only fits with reduce_zero_label.
    _set_label_value(_label(tiny_ade, 1), 150)
    cfg = _data_cfg(tiny_ade, 150, reduce_zero_label=False)
    with pytest.raises(DatasetError, match='reduce_zero_label=True on the dataset') as error:
        check_data_cfg(cfg, ('train', ))
    message = str(error.value)
    assert _label(tiny_ade, 1) in message and 'holds the value(s) 150 ' in message
    assert 'model.decode_head num_classes=150: 0..149' in message
    assert 'ADE20K\'s labels are 0..150 with 0 = "other"' in message
    # With reduce_zero_label (ADE20KDataset's default) the same files fit.
    assert check_data_cfg(_data_cfg(tiny_ade, 150), ('train', )) == [
        'train: 3 samples, label values of 3 files (sample)']


def test_too_few_classes_for_the_labels_says_to_fix_num_classes(tiny_ade):
    cfg = _data_cfg(tiny_ade, 2, 'val')
    with pytest.raises(DatasetError, match='num_classes does not match the labels') as error:
        check_data_cfg(cfg, ('val', ))
    message = str(error.value)
    assert message.startswith('val dataset (ADE20KDataset): label file ')
    assert 'holds the value(s) 2, 3 ' in message and 'model.decode_head.num_classes' in message


def test_ignore_index_comes_from_the_head_also_under_tta(tiny_ade):
    _set_label_value(_label(tiny_ade, 0), 100)  # reduce_zero_label: 100 -> 99
    cfg = _data_cfg(tiny_ade, 4)
    with pytest.raises(DatasetError, match='holds the value\\(s\\) 99 .*ignore_index 255'):
        check_data_cfg(cfg, ('train', ))
    # ignore_index=99 admits 99, but then the 255 that reduce_zero_label writes for 0 is out.
    cfg.model.decode_head.ignore_index = 99
    with pytest.raises(DatasetError, match='holds the value\\(s\\) 255 .*ignore_index 99'):
        check_data_cfg(cfg, ('train', ))
    # tools/test.py --tta wraps the model: the check looks inside.
    cfg.model = dict(type='SegTTAModel', module=dict(decode_head=dict(num_classes=4)))
    with pytest.raises(DatasetError, match='holds the value\\(s\\) 99 '):
        check_data_cfg(cfg, ('train', ))


def test_unconverted_pascal_context_labels_say_to_run_the_converter(tmp_path):
    root = make_ade_like_dataset(str(tmp_path / 'ctx'), num_train=2, num_val=0, size=16,
                                 num_classes=4)
    # The full PASCAL Context label set in a 16-bit PNG: mmseg's uint8 read turns 300 into
    # 44, a valid class of 60; only the file's own values show the problem.
    _set_label_value(_label(root, 1), 300, np.uint16)
    cfg = Config(dict(
        model=dict(decode_head=dict(num_classes=60)),
        train_dataloader=dict(dataset=dict(
            type='PascalContextDataset', data_root=root, ann_file='',
            data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
            img_suffix='.jpg', pipeline=[dict(type='LoadAnnotations')]))))
    with pytest.raises(DatasetError, match='stores values up to 300, beyond 8 bits') as error:
        check_data_cfg(cfg, ('train', ))
    message = str(error.value)
    assert _label(root, 1) in message and 'were not converted' in message
    assert 'tools/dataset_converters/pascal_context.py' in message


def test_sample_mode_reads_an_even_spread_and_full_mode_reads_every_file(tmp_path):
    root = make_ade_like_dataset(str(tmp_path / 'ade'), num_train=9, num_val=0, size=16,
                                 num_classes=4)
    assert spread(9, 3) == [0, 4, 8] and spread(9, 20) == list(range(9))
    _set_label_value(_label(root, 5), 9)  # not among files 0, 4, 8
    cfg = _data_cfg(root, 4)
    assert check_data_cfg(cfg, ('train', ), 'sample', 3) == [
        'train: 9 samples, label values of 3 files (sample)']
    with pytest.raises(DatasetError, match='synthetic_training_00005.png'):
        check_data_cfg(cfg, ('train', ), 'full')
    assert check_data_cfg(cfg, ('train', ), 'off') == ['train: paths ok']


def test_reduce_zero_label_in_load_annotations_and_dataset_must_agree(tiny_ade):
    cfg = _data_cfg(tiny_ade, 4, reduce_zero_label=False,
                    pipeline=[dict(type='LoadAnnotations', reduce_zero_label=True)])
    with pytest.raises(DatasetError, match='on the dataset only'):
        check_data_cfg(cfg, ('train', ))


def test_tools_check_label_values_before_building_the_model(monkeypatch, tmp_path):
    """tools/train.py stops on a bad label before any model is built; the flags choose how
    much is read (--no-data-check is --data-check off)."""
    import runpy
    root = make_ade_like_dataset(str(tmp_path / 'ade'), num_train=3, num_val=2, size=16,
                                 num_classes=4)
    _set_label_value(_label(root, 1, 'validation'), 200)
    config = osp.join(CONFIGS, 'demo_davpt_synthetic.py')
    train = osp.join(CONFIGS, '..', 'tools', 'train.py')
    data = [f'{s}_dataloader.dataset.data_root={root}' for s in ('train', 'val', 'test')]

    def run(*flags):
        monkeypatch.setattr(sys, 'argv', ['train.py', config, '--work-dir',
                                          str(tmp_path / 'work'), *flags, '--cfg-options',
                                          *data])
        runpy.run_path(train, run_name='__main__')

    with pytest.raises(DatasetError, match='synthetic_validation_00001.png.*199'):
        run()
    with pytest.raises(DatasetError, match='synthetic_validation_00001.png'):
        run('--data-check', 'full')
    with pytest.raises(SystemExit):  # contradictory flags: argparse's usage error
        run('--no-data-check', '--data-check', 'full')
