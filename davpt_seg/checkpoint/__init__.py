"""Every file davpt-seg reads or writes weights from, in one place.

``files``: readers that name a truncated or corrupt file; ``safe_loading``: mmengine
checkpoints under ``torch.load(weights_only=True)``; ``pretrained``: timm- and mmseg-format
ViT weights; ``trainable``: trainable-only exports; ``layout``: older state-dict layouts.
This layer imports torch, mmengine and mmseg's registry only, never the rest of davpt_seg.
"""
from .files import CheckpointFileError, check_file, read_safetensors_file, read_torch_file
from .layout import upgrade_legacy_keys
from .pretrained import is_mmseg_vit, mmseg_to_timm, read_state_dict
from .safe_loading import enable_safe_mmengine_checkpoints
from .trainable import (SIGNATURE_KEY, export_trainable, read_trainable_checkpoint,
                        trunk_signature)

__all__ = ['CheckpointFileError', 'check_file', 'read_safetensors_file', 'read_torch_file',
           'upgrade_legacy_keys', 'is_mmseg_vit', 'mmseg_to_timm', 'read_state_dict',
           'enable_safe_mmengine_checkpoints', 'SIGNATURE_KEY', 'export_trainable',
           'read_trainable_checkpoint', 'trunk_signature']
