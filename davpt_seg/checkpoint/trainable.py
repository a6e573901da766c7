"""Trainable-only checkpoints: the trained weights without the frozen pretrained trunk.

A DA-VPT model trains ~4% of its weights; its full checkpoint still carries the whole frozen
ViT (1.2 GB for ViT-L) plus the optimizer state. :func:`export_trainable` keeps everything
that is not a frozen trunk tensor (prompts, k/v bias offsets, heads, BN statistics, the
class → prompt mapping) in a file that loads with ``torch.load(weights_only=True)``.

Loading needs no special tool: :class:`PromptedViT` registers a load pre-hook, so any
``load_state_dict`` (torch's, or mmengine's
``load_checkpoint`` that ``tools/test.py`` / ``load_from`` use) that brings a trainable-only
state dict first fills the trunk from the backbone's ``init_cfg`` pretrained file. The
export records a numeric signature of the trunk it was trained on; loading compares it, so
a wrong pretrained file is an error instead of silently wrong predictions.
"""
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

import torch

from .files import (SAFETENSORS_META_KEY, CheckpointFileError, read_safetensors_file,
                    read_torch_file)
from .layout import upgrade_legacy_keys

# Key (under the backbone's prefix) of the trunk signature inside an exported state dict.
SIGNATURE_KEY = 'pretrained_trunk_signature'
FORMAT_TAG = 'davpt_seg.trainable_only.v1'
# Meta entries worth keeping: the config rebuilds the model, dataset_meta names the classes.
_KEPT_META = ('cfg', 'dataset_meta', 'epoch', 'iter', 'seed', 'experiment_name',
              'mmengine_version', 'time')


# ----------------------------------------------------------------------------- signature
def trunk_signature(tensors: List[torch.Tensor]) -> torch.Tensor:
    """(K, 2) float64: sum and sum of squares of each tensor.

    Not a hash on purpose: the pos_embed resize on load may differ in the last bit between
    machines, which a hash would flag; a different pretrained trunk changes these sums by
    orders of magnitude more than rounding does.
    """
    rows = [torch.stack([t.detach().double().sum(), t.detach().double().pow(2).sum()]).cpu()
            for t in tensors]
    return torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.float64)


def _signatures_match(expected: torch.Tensor, actual: torch.Tensor) -> bool:
    if expected.shape != actual.shape:
        return False
    return torch.allclose(actual, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- which keys are frozen
def frozen_trunk_keys(backbone: torch.nn.Module) -> List[str]:
    """The backbone's state-dict keys that its pretrained file provides (PromptedViT's
    ``frozen_trunk_state_keys``); other backbones cannot have trainable-only checkpoints."""
    keys = getattr(backbone, 'frozen_trunk_state_keys', None)
    if keys is None:
        raise TypeError(f'{type(backbone).__name__} has no pretrained trunk: trainable-only '
                        'checkpoints need the PromptedViT backbone')
    return keys()


def pretrained_path(backbone: torch.nn.Module) -> Optional[str]:
    init_cfg = getattr(backbone, 'init_cfg', None)
    if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
        return init_cfg.get('checkpoint')
    return None


def check_restored_trunk(signature: Optional[torch.Tensor], restored: List[torch.Tensor],
                         path: str) -> None:
    """Raises when the trunk refilled from ``path`` is not the one an export was made on."""
    if signature is None:
        return
    actual = trunk_signature(restored)
    if not _signatures_match(signature, actual):
        raise RuntimeError(
            f'the pretrained trunk {path!r} is not the one this trainable-only checkpoint '
            f'was trained on ({signature.shape[0]} frozen tensors expected, '
            f'{actual.shape[0]} found, or their values differ). Point '
            'model.backbone.init_cfg.checkpoint at the original pretrained file.')


# ------------------------------------------------------------------------------ export
def _check_plain(obj, where: str = 'meta'):
    """Raises unless ``obj`` is made of types ``torch.load(weights_only=True)`` accepts."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f'{where} has a key of type {type(key).__name__}')
            _check_plain(value, f'{where}[{key!r}]')
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            _check_plain(value, f'{where}[{index}]')
    elif not (obj is None or isinstance(obj, (str, int, float, bool, torch.Tensor))):
        raise TypeError(f'{where} is a {type(obj).__name__}, which a weights-only load '
                        'refuses; convert it to plain Python types')


def to_plain(obj):
    """numpy arrays/scalars (mmengine meta, palettes) → lists and Python numbers."""
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    if hasattr(obj, 'tolist') and not isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


def build_model_from_checkpoint_cfg(cfg):
    """Builds the segmentor of ``cfg`` on the CPU, weights as constructed, SyncBN as BN
    (same state-dict keys; SyncBN cannot run outside torch.distributed). The registry
    builds it: importing davpt_seg, which this module is part of, registered our modules."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model_cfg = cfg.model.copy()
    model_cfg.pop('pretrained', None)
    return revert_sync_batchnorm(MODELS.build(model_cfg))


def split_trainable_state(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor]
                          ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Returns (kept state dict + signature, dropped keys) for ``model``'s structure."""
    backbone = getattr(model, 'backbone', None)
    frozen = ['backbone.' + k for k in frozen_trunk_keys(backbone)]
    absent = [k for k in frozen if k not in state_dict]
    if absent:
        raise KeyError(f'the source checkpoint lacks {len(absent)} frozen trunk tensors '
                       f'({absent[:5]} ...): it is already trainable-only or belongs to '
                       'another model; export needs a full training checkpoint')
    model_keys = set(model.state_dict())
    foreign = sorted(k for k in state_dict if k not in model_keys)
    if foreign:
        raise KeyError(f'the source checkpoint holds {len(foreign)} keys the configured model '
                       f'does not have ({foreign[:5]} ...): pass the config it was trained '
                       'with (--config)')
    frozen_set = set(frozen)
    kept = {k: v.detach().cpu().clone() for k, v in state_dict.items() if k not in frozen_set}
    kept['backbone.' + SIGNATURE_KEY] = trunk_signature([state_dict[k] for k in frozen])
    return kept, frozen


def export_trainable(src: str, dst: str, config: Optional[str] = None) -> dict:
    """Writes the trainable-only checkpoint of ``src`` to ``dst`` (``.pth`` or
    ``.safetensors``) and returns a summary (sizes, key counts).

    ``config`` defaults to the config text mmengine stores in the checkpoint's meta.
    """
    from mmengine.config import Config

    if not osp.isfile(src):
        raise FileNotFoundError(f'source checkpoint {src!r} does not exist')
    checkpoint = read_torch_file(src, 'source checkpoint')
    state_dict = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) \
        else None
    if not isinstance(state_dict, dict) or not state_dict:
        raise ValueError(f'{src!r} holds no state dict')
    meta = dict(checkpoint.get('meta', {}) or {})
    if config is not None:
        cfg = Config.fromfile(config)
    elif meta.get('cfg'):
        cfg = Config.fromstring(meta['cfg'], file_format='.py')
    else:
        raise ValueError(f'{src!r} carries no config in its meta (not written by mmengine?): '
                         'pass the training config with --config')
    try:
        model = build_model_from_checkpoint_cfg(cfg)
    except (TypeError, ValueError, KeyError) as error:
        if config is not None:
            raise
        raise ValueError(f'the config stored in {src!r} does not build today ({error}); it '
                         'was written by an older davpt-seg: pass the training config with '
                         '--config (the checkpoint itself loads)') from error
    pretrained = pretrained_path(model.backbone)
    if not pretrained:
        raise ValueError('the config\'s backbone has no init_cfg=dict(type="Pretrained", '
                         'checkpoint=...): a trainable-only checkpoint could never be loaded '
                         'again, because nothing would restore the frozen trunk')
    state_dict = upgrade_legacy_keys(
        {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)})
    kept, dropped = split_trainable_state(model, state_dict)

    out_meta = {k: meta[k] for k in _KEPT_META if k in meta}
    if 'cfg' not in out_meta:
        out_meta['cfg'] = cfg.pretty_text
    out_meta = to_plain(out_meta)
    out_meta.update(format=FORMAT_TAG, source=osp.abspath(src), pretrained=pretrained,
                    dropped_trunk_tensors=len(dropped))
    _check_plain(out_meta)

    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    if dst.endswith('.safetensors'):
        import json

        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in kept.items()}, dst,
                  metadata={SAFETENSORS_META_KEY: json.dumps(out_meta)})
    else:
        torch.save({'meta': out_meta, 'state_dict': kept}, dst)
    return dict(src=src, dst=dst, src_bytes=osp.getsize(src), dst_bytes=osp.getsize(dst),
                kept_tensors=len(kept) - 1, dropped_tensors=len(dropped),
                kept_numel=sum(v.numel() for k, v in kept.items()
                               if not k.endswith(SIGNATURE_KEY)),
                pretrained=pretrained)


def read_trainable_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(state_dict, meta) of an exported file, ``.pth`` or ``.safetensors``, loaded safely.

    A truncated or corrupt file, or one that is not an export, is an error naming it.
    """
    what = 'trainable-only checkpoint'
    if path.endswith('.safetensors'):
        state_dict, meta = read_safetensors_file(path, what)
    else:
        checkpoint = read_torch_file(path, what)
        if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get('state_dict'),
                                                            dict)):
            raise CheckpointFileError(
                f'{what} {path!r} holds no state_dict: it is not a file written by '
                'tools/misc/export_trainable.py (expected {"meta": ..., "state_dict": ...})')
        state_dict, meta = checkpoint['state_dict'], checkpoint.get('meta', {})
    if meta.get('format') != FORMAT_TAG:
        raise CheckpointFileError(
            f'{what} {path!r} is not a trainable-only export: its meta has format='
            f'{meta.get("format")!r}, not {FORMAT_TAG!r} (tools/misc/export_trainable.py writes '
            'it); a full training checkpoint loads with torch.load or tools/test.py')
    return state_dict, meta


# ------------------------------------------------------------------------ size estimate
def checkpoint_size_estimate(model: torch.nn.Module, optimizer: str = 'adamw') -> dict:
    """Bytes of a full mmengine checkpoint (weights + AdamW moments) vs the export."""
    state = model.state_dict()
    trainable = sum(p.numel() * p.element_size() for p in model.parameters()
                    if p.requires_grad)
    everything = sum(v.numel() * v.element_size() for v in state.values())
    frozen = {'backbone.' + k for k in frozen_trunk_keys(model.backbone)}
    kept = sum(v.numel() * v.element_size() for k, v in state.items() if k not in frozen)
    moments = 2 if optimizer == 'adamw' else 1
    return dict(full_bytes=everything + moments * trainable, weights_bytes=everything,
                export_bytes=kept, trainable_param_bytes=trainable,
                frozen_tensors=len(frozen), kept_tensors=len(state) - len(frozen))
