"""From a config and a checkpoint to a model ready for inference, and its image pipeline.

Shared by ``tools/deployment/infer.py``, ``tools/deployment/export_onnx.py`` and the
prompt-attention visualiser, so that every tool builds the model, loads full or
trainable-only checkpoints, names the classes and prepares images the same way (the way
``tools/test.py`` does).
"""
import copy
import os.path as osp
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

# The pipeline steps that read ground truth: inference has none.
_ANNOTATION_LOADERS = ('LoadAnnotations', 'LoadDepthAnnotation')


class InputError(Exception):
    """A problem with what the user passed (file, config, checkpoint): its message names
    the file and the fix; tools print it without a traceback."""


# ------------------------------------------------------------------------------ config
def load_config(path: str, cfg_options: Optional[dict] = None):
    """``Config.fromfile`` with ``--cfg-options`` merged, and a clear error when missing."""
    from mmengine.config import Config
    if not osp.isfile(path):
        raise InputError(f'config {path!r} does not exist')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if not cfg.get('model'):
        raise InputError(f'config {path!r} defines no `model`')
    return cfg


# ------------------------------------------------------------------------------- model
def load_segmentor(cfg, checkpoint: str, device: str = 'cpu'):
    """The segmentor of ``cfg`` with ``checkpoint`` loaded, in eval mode on ``device``.

    ``checkpoint`` is a full training checkpoint or a trainable-only export
    (``tools/misc/export_trainable.py``): loading an export refills the frozen trunk from
    ``model.backbone.init_cfg``'s pretrained file (PromptedViT's load hook). Returns
    ``(model, checkpoint_meta)``; ``model.dataset_meta`` holds the classes and palette.
    """
    import torch
    from mmengine.runner import load_checkpoint

    from ..checkpoint.trainable import build_model_from_checkpoint_cfg
    if not osp.isfile(checkpoint):
        raise InputError(f'checkpoint {checkpoint!r} does not exist')
    model = build_model_from_checkpoint_cfg(cfg)
    try:
        loaded = load_checkpoint(model, checkpoint, map_location='cpu', strict=True,
                                 logger='silent')
    except (RuntimeError, KeyError, ValueError, OSError) as error:
        raise InputError(
            f'cannot load {checkpoint!r} into the model of the config: {error}\n'
            '(For a trainable-only export, `--cfg-options model.backbone.init_cfg.checkpoint='
            'PATH` names the pretrained trunk it was trained from; a checkpoint of another '
            'model needs the config it was trained with.)') from error
    meta = loaded.get('meta', {}) if isinstance(loaded, dict) else {}
    model.cfg = cfg
    model.dataset_meta = dataset_meta_for(cfg, meta, model.decode_head.num_classes)
    return model.to(torch.device(device)).eval(), meta


# -------------------------------------------------------------------- classes and palette
def dataset_meta_for(cfg, checkpoint_meta: Optional[dict] = None,
                     num_classes: Optional[int] = None) -> dict:
    """``dict(classes, palette)`` for the model's class indices.

    In order: the ``dataset_meta`` a checkpoint (or an ONNX export) carries, which is what
    the training dataset reported; else what mmseg's dataset class of the config's
    test/val/train dataset makes of its ``metainfo`` (subset palettes for class subsets,
    mmseg's seeded random palette where none is given); else generic names.
    """
    meta = (checkpoint_meta or {}).get('dataset_meta') or {}
    classes, palette = meta.get('classes'), meta.get('palette')
    if not classes:
        classes, palette = _config_dataset_meta(cfg)
    if num_classes is not None:
        classes = list(classes or [])[:num_classes]
        classes += [f'class {i}' for i in range(len(classes), num_classes)]
    classes = [str(c) for c in classes]
    if not palette or len(palette) < len(classes):
        palette = _seeded_palette(len(classes))
    return dict(classes=tuple(classes), palette=[[int(v) for v in c]
                                                 for c in palette[:len(classes)]])


def _seeded_palette(count: int) -> List[List[int]]:
    # mmseg's palette for datasets without one (BaseSegDataset._update_palette): seed 42.
    return np.random.RandomState(42).randint(0, 255, size=(count, 3)).tolist()


def _config_dataset_meta(cfg) -> Tuple[Optional[list], Optional[list]]:
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    for loader in ('test_dataloader', 'val_dataloader', 'train_dataloader'):
        dataset = (cfg.get(loader) or {}).get('dataset') or {}
        while isinstance(dataset.get('dataset'), dict):  # RepeatDataset and other wrappers
            dataset = dataset['dataset']
        dataset_cls = DATASETS.get(dataset['type']) if dataset.get('type') else None
        if dataset_cls is None or not hasattr(dataset_cls, 'get_label_map'):
            continue
        # mmseg's own metainfo logic, without the dataset's __init__ (which may check that
        # the data is on disk: inference does not need it).
        bare = dataset_cls.__new__(dataset_cls)
        bare._metainfo = dataset_cls._load_metainfo(copy.deepcopy(dataset.get('metainfo')))
        classes = bare._metainfo.get('classes')
        if not classes:
            continue
        bare.label_map = dataset_cls.get_label_map(classes)
        try:
            palette = bare._update_palette()
        except ValueError:
            palette = None
        return list(classes), palette
    return None, None


# ---------------------------------------------------------------------------- pipeline
def _strip_annotations(steps: Sequence) -> list:
    kept = []
    for step in steps:
        if isinstance(step, (list, tuple)):  # TestTimeAug: a list of alternatives per stage
            stage = _strip_annotations(step)
            if stage:
                kept.append(stage)
        elif step.get('type') not in _ANNOTATION_LOADERS:
            step = copy.deepcopy(dict(step))
            if 'transforms' in step:
                step['transforms'] = _strip_annotations(step['transforms'])
            kept.append(step)
    return kept


def _pipeline_cfg(cfg, tta: bool, config_name: str = 'the config') -> list:
    if tta:
        if 'tta_pipeline' not in cfg or 'tta_model' not in cfg:
            raise InputError(f'--tta needs `tta_pipeline` and `tta_model` in {config_name}; '
                             'inherit mmseg::_base_/default_runtime.py (tta_model) and define '
                             'a tta_pipeline like mmseg::_base_/datasets/ade20k.py')
        return list(cfg.tta_pipeline)
    # What tools/test.py runs: the test dataloader's pipeline.
    for loader in ('test_dataloader', 'val_dataloader'):
        pipeline = ((cfg.get(loader) or {}).get('dataset') or {}).get('pipeline')
        if pipeline:
            return list(pipeline)
    if cfg.get('test_pipeline'):
        return list(cfg.test_pipeline)
    raise InputError(f'{config_name} has no test pipeline (test_dataloader.dataset.pipeline '
                     'or test_pipeline) to prepare images with')


def inference_pipeline(cfg, tta: bool = False, config_name: str = 'the config'
                       ) -> Tuple[Callable[[dict], dict], Callable[[dict], dict]]:
    """``(load, prepare)``: the config's test (or TTA) pipeline without its annotation
    steps, split after the image loader.

    ``load(dict(img_path=path))`` reads the image as mmseg does (its errors are the
    image's); ``prepare(results)`` runs the rest (resize, flips, packing). The split keeps
    the decoded image for overlays without reading the file twice.
    """
    from mmcv.transforms import Compose, LoadImageFromFile
    from mmengine.registry import init_default_scope
    from mmseg.registry import TRANSFORMS
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    steps = _strip_annotations(_pipeline_cfg(cfg, tta, config_name))
    loader_cls = TRANSFORMS.get(steps[0]['type']) if steps else None
    if loader_cls is None or not issubclass(loader_cls, LoadImageFromFile):
        raise InputError(f'the pipeline of {config_name} does not start with an image loader '
                         f'(LoadImageFromFile): {steps[:1]}')
    return TRANSFORMS.build(steps[0]), Compose(steps[1:])
