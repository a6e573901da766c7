"""Reading pretrained ViT weights: timm- and mmseg-format files, on the safe loading path.

Third-party weights never go through full unpickling: ``.pth`` files load with
``torch.load(weights_only=True)`` and ``.safetensors`` through safetensors.
"""
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict

import torch

from .files import read_safetensors_file, read_torch_file

# mmseg's VisionTransformer key → timm's VisionTransformer key; the inverse of mmseg's
# tools/model_converters/vit2mmseg.py.
_MMSEG_TO_TIMM_BLOCK = (
    ('attn.attn.in_proj_weight', 'attn.qkv.weight'),
    ('attn.attn.in_proj_bias', 'attn.qkv.bias'),
    ('attn.attn.out_proj.', 'attn.proj.'),
    ('ffn.layers.0.0.', 'mlp.fc1.'),
    ('ffn.layers.1.', 'mlp.fc2.'),
    ('ln1.', 'norm1.'),
    ('ln2.', 'norm2.'),
)


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Reads a checkpoint file into a flat ``{key: tensor}`` dict.

    Accepts bare state dicts and the usual wrappers (``state_dict``, ``model``); a full mmseg
    segmentor checkpoint contributes its ``backbone.*`` weights, a davpt-seg one its trunk.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'pretrained checkpoint {path!r} does not exist. Put the ViT weights there '
            '(see README.md, "Pretrained weights") or set '
            'model.backbone.init_cfg.checkpoint to the right file.')
    if path.endswith('.safetensors'):
        state, _ = read_safetensors_file(path, 'pretrained checkpoint')
    else:
        # Unpickling refused: never fall back to unsafe loading.
        state = read_torch_file(path, 'pretrained checkpoint')
    for wrapper in ('state_dict', 'model', 'module'):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    # A segmentor checkpoint contributes its backbone; one of ours, its PromptedViT trunk.
    for prefix in ('backbone.', 'trunk.'):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return OrderedDict((k, v) for k, v in state.items() if isinstance(v, torch.Tensor))


def is_mmseg_vit(state: Dict[str, torch.Tensor]) -> bool:
    return any(k.startswith('layers.') for k in state)


def mmseg_to_timm(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    converted = OrderedDict()
    for key, value in state.items():
        match = re.match(r'layers\.(\d+)\.(.*)', key)
        if match:
            index, rest = match.groups()
            for old, new in _MMSEG_TO_TIMM_BLOCK:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            key = f'blocks.{index}.{rest}'
        elif key.startswith('patch_embed.projection.'):
            key = key.replace('patch_embed.projection.', 'patch_embed.proj.')
        elif key.startswith('ln1.'):  # mmseg's final norm
            key = 'norm.' + key[len('ln1.'):]
        elif key.startswith('ln_pre.'):  # pre_norm=True: build_norm_layer(postfix='_pre')
            key = 'norm_pre.' + key[len('ln_pre.'):]
        converted[key] = value
    weight = converted.get('patch_embed.proj.weight')
    if weight is not None and 'patch_embed.proj.bias' not in converted:
        # mmseg's ViT has no patch-embedding bias by default (patch_bias=False): a zero bias
        # computes the same features.
        converted['patch_embed.proj.bias'] = weight.new_zeros(weight.shape[0])
    return converted
