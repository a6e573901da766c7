"""A frozen timm ViT with deep visual prompts, distribution-guided blocks and k/v bias tuning.

The trunk is any timm ``VisionTransformer`` built with ``pretrained=False`` and loaded from a
local file, so supervised IN-21k, MAE, MoCo v3 or DINOv2 weights all work. Outputs are
mmseg's ``VisionTransformer``'s: a tuple of NCHW patch-token maps at ``out_indices``, or of
``[map, cls_token]`` pairs with ``output_cls_token`` (DPT), so every mmseg ViT head and neck
(SETR-PUP/MLA/Naive, UperNet with or without ``MultiLevelNeck``, Segmenter, DPT) runs
unchanged.

What trains is four independent knobs (``frozen_exclude``, ``num_prompts`` /
``deep_prompts``, ``guided_blocks``, ``kv_bias_offset``); ``tuning_mode`` names the usual
combinations (``TUNING_PRESETS``).
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from ...checkpoint.pretrained import is_mmseg_vit, mmseg_to_timm, read_state_dict
from ...checkpoint.trainable import SIGNATURE_KEY, check_restored_trunk, pretrained_path
from .guided_attention import (GuidedAttention, TokenSpaces, check_guidable,
                               guided_block_forward)

# Named combinations of the knobs. A preset fixes the knobs it lists; setting one of them
# to another value as well is a contradiction, and an error. The da-vpt presets leave
# guided_blocks to the config (they need at least one).
TUNING_PRESETS: Dict[str, dict] = {
    'linear': dict(frozen_exclude=(), num_prompts=0, guided_blocks=(), kv_bias_offset=False),
    'bias': dict(frozen_exclude=('bias', ), num_prompts=0, guided_blocks=(),
                 kv_bias_offset=False),
    'vpt-shallow': dict(frozen_exclude=(), deep_prompts=False, guided_blocks=(),
                        kv_bias_offset=False),
    'vpt-deep': dict(frozen_exclude=(), deep_prompts=True, guided_blocks=(),
                     kv_bias_offset=False),
    'da-vpt': dict(frozen_exclude=(), deep_prompts=True, kv_bias_offset=False),
    'da-vpt+': dict(frozen_exclude=(), deep_prompts=True, kv_bias_offset=True),
    'full': dict(frozen_exclude=('all', ), num_prompts=0, guided_blocks=(),
                 kv_bias_offset=False),
}
TUNING_MODES = tuple(TUNING_PRESETS)
GUIDED_PRESETS = ('da-vpt', 'da-vpt+')
# Each knob's value when neither the config nor a preset sets it: VPT-Deep, 20 prompts.
KNOB_DEFAULTS = dict(frozen_exclude=(), num_prompts=20, deep_prompts=True, guided_blocks=(),
                     kv_bias_offset=False)
DEFAULT_NUM_GUIDED_PROMPTS = 10  # the official segmentation release


@dataclass
class GuidedBlockOutput:
    """What one guided block exposes to the metric losses."""
    block_index: int
    prompts: TokenSpaces  # (M, width): the guided prompts (shared by the batch)
    cls: TokenSpaces  # (B, width): the CLS token
    patches: TokenSpaces  # (B, H*W, width): the patch tokens


@dataclass
class TrunkAuxiliary:
    """Everything besides the feature maps that a training forward yields."""
    hw_shape: Tuple[int, int]
    guided: List[GuidedBlockOutput]
    last_cls: torch.Tensor  # (B, D) CLS token after the last block
    last_patches: torch.Tensor  # (B, H*W, D) patch tokens after the last block


def _normalised(knob: str, value):
    if knob in ('frozen_exclude', 'guided_blocks'):
        return tuple(value)
    if knob == 'num_prompts' and not isinstance(value, int):
        return tuple(value)
    return value


def resolve_tuning(tuning_mode: Optional[str], **given) -> dict:
    """The knobs' values: the config's, else the preset's, else ``KNOB_DEFAULTS``.

    Raises when the preset and an explicit setting disagree, naming both.
    """
    preset = {}
    if tuning_mode is not None:
        if tuning_mode not in TUNING_PRESETS:
            raise ValueError(f'tuning_mode={tuning_mode!r} is not one of {TUNING_MODES} '
                             '(or leave it None and set the knobs themselves)')
        preset = TUNING_PRESETS[tuning_mode]
    resolved = {}
    for knob, default in KNOB_DEFAULTS.items():
        value = given.get(knob)
        if knob in preset and value is not None and \
                _normalised(knob, value) != _normalised(knob, preset[knob]):
            raise ValueError(
                f'tuning_mode={tuning_mode!r} sets {knob}={preset[knob]!r}, but the config '
                f'also sets {knob}={value!r}. Drop one of the two: the preset is shorthand for '
                f'{preset}.')
        resolved[knob] = _normalised(knob, value if value is not None else
                                     preset.get(knob, default))
    if tuning_mode in GUIDED_PRESETS and not resolved['guided_blocks']:
        raise ValueError(f'tuning_mode={tuning_mode!r} needs guided blocks: set '
                         'guided_blocks, e.g. (11, ) for ViT-L (the official release)')
    return resolved


@MODELS.register_module()
class PromptedViT(BaseModule):
    """ViT with VPT prompts and DA-VPT guided blocks, built from a timm architecture.

    Args:
        arch: timm model name of a ``VisionTransformer`` (e.g. ``'vit_large_patch16_224'``).
        img_size: training crop size; the position embedding is kept at this grid and
            resampled at run time for other input sizes.
        out_indices: blocks (0-based) whose patch tokens are returned as NCHW maps.
        tuning_mode: a name of ``TUNING_PRESETS`` (``linear``, ``bias``, ``vpt-shallow``,
            ``vpt-deep``, ``da-vpt``, ``da-vpt+``, ``full``), shorthand for the four knobs
            below; ``None`` (default): the knobs alone decide.
        frozen_exclude: trunk parameters that train, by name fragment, as mmseg's
            ``VisionTransformer`` has it (``('bias', )``: BitFit; ``('all', )``: full
            fine-tuning). Default ``()``: the whole trunk is frozen.
        num_prompts: prompts per block (an int, or one count per block; 0: none) outside
            guided blocks. Default 20.
        deep_prompts: ``True`` (VPT-Deep, default): every block gets fresh prompts and the
            previous block's prompt outputs are dropped; ``False`` (VPT-Shallow): prompts
            enter once, before the first block, and run through all blocks.
        guided_blocks: blocks whose prompts are tied to class clusters and trained by the
            segmentor's metric losses (DA-VPT). Default ``()``.
        num_guided_prompts: ``M``, the guided prompts of each guided block (default 10).
        num_extra_prompts: ``E``, unguided prompts after the guided ones in guided blocks
            (default 0).
        kv_bias_offset: DA-VPT+: learnable offsets on every block's attention key and value
            biases (the pretrained biases stay frozen). Default ``False``.
        interpolate_mode: position-embedding resampling (mmseg SETR uses ``'bilinear'``).
        final_norm: apply the trunk's final norm after the last block (mmseg's meaning: it
            changes the last block's output map, and the CLS token it returns).
        with_cls_token: ``False`` drops the CLS token (after its position embedding is
            added) before the first block, as mmseg's ``VisionTransformer`` does (SETR-MLA's
            config). Guided blocks need it: their CLS metric loss compares with it.
        output_cls_token: each output becomes ``[map, cls_token]`` (mmseg's format; DPT's
            head reads the CLS token from it). Needs ``with_cls_token``.
        drop_rate: dropout after adding the position embedding.
        drop_path_rate: stochastic depth of the trunk.
        with_cp: gradient checkpointing per block (saves memory, costs one extra forward).
        timm_kwargs: extra ``timm.create_model`` arguments (``depth``, ``embed_dim``, ...).
        init_cfg: ``dict(type='Pretrained', checkpoint=path)`` loads a timm- or mmseg-format
            ViT checkpoint into the trunk.
    """

    def __init__(self,
                 arch: str = 'vit_large_patch16_224',
                 img_size: Union[int, Sequence[int]] = 512,
                 out_indices: Union[int, Sequence[int]] = (9, 14, 19, 23),
                 tuning_mode: Optional[str] = None,
                 frozen_exclude: Optional[Sequence[str]] = None,
                 num_prompts: Optional[Union[int, Sequence[int]]] = None,
                 deep_prompts: Optional[bool] = None,
                 guided_blocks: Optional[Sequence[int]] = None,
                 num_guided_prompts: Optional[int] = None,
                 num_extra_prompts: Optional[int] = None,
                 kv_bias_offset: Optional[bool] = None,
                 interpolate_mode: str = 'bicubic',
                 final_norm: bool = False,
                 with_cls_token: bool = True,
                 output_cls_token: bool = False,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 with_cp: bool = False,
                 timm_kwargs: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        knobs = resolve_tuning(tuning_mode, frozen_exclude=frozen_exclude,
                               num_prompts=num_prompts, deep_prompts=deep_prompts,
                               guided_blocks=guided_blocks, kv_bias_offset=kv_bias_offset)
        self.tuning_mode = tuning_mode
        self.frozen_exclude = knobs['frozen_exclude']
        self.deep_prompts = knobs['deep_prompts']
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.interpolate_mode = interpolate_mode
        self.final_norm = final_norm
        self.with_cp = with_cp

        self.trunk = self._build_trunk(arch, drop_rate, drop_path_rate, timm_kwargs)
        trunk = self.trunk
        self.depth = len(trunk.blocks)
        self.embed_dim = trunk.embed_dim
        self.patch_size = trunk.patch_embed.patch_size
        self.pos_prefix = 0 if trunk.no_embed_class else trunk.num_prefix_tokens
        self.pos_grid = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self._set_cls_token(with_cls_token, output_cls_token, bool(knobs['guided_blocks']))
        # Prefix tokens (CLS, registers) in the sequence the blocks see.
        self.num_prefix = trunk.num_prefix_tokens - int(self.drop_cls_token)

        if isinstance(out_indices, int):  # mmseg accepts one index; -1 is the last block
            out_indices = (out_indices, )
        self.out_indices = tuple(self._block_index(i, 'out_indices') for i in out_indices)
        self.guided_blocks = tuple(sorted(
            self._block_index(i, 'guided_blocks') for i in knobs['guided_blocks']))
        self.num_guided_prompts, num_extra_prompts = self._guided_prompt_counts(
            num_guided_prompts, num_extra_prompts)
        self.prompt_counts = self._prompt_layout(knobs['num_prompts'], num_extra_prompts)
        for index in self.guided_blocks:
            check_guidable(trunk.blocks[index], index)
        # Keyed by block index; blocks without prompts have no entry (no empty parameters).
        self.prompts = nn.ParameterDict({
            str(index): nn.Parameter(torch.zeros(1, count, self.embed_dim))
            for index, count in enumerate(self.prompt_counts) if count
        })
        self._freeze()
        if knobs['kv_bias_offset']:
            self._enable_kv_bias_offsets()
        self._init_prompts()

    # ----------------------------------------------------------------- construction helpers
    def _build_trunk(self, arch: str, drop_rate: float, drop_path_rate: float,
                     timm_kwargs: Optional[dict]) -> VisionTransformer:
        timm_kwargs = dict(timm_kwargs or {})
        if 'attn_layer' in timm_kwargs:
            raise ValueError('timm_kwargs sets attn_layer, but PromptedViT builds its blocks '
                             'with GuidedAttention (timm\'s Attention plus what the guided '
                             'blocks need): remove attn_layer from timm_kwargs')
        not_a_vit = (f'arch={arch!r} is not a timm VisionTransformer; PromptedViT needs a '
                     'ViT architecture (vit_*, deit*, ...)')
        try:
            trunk = timm.create_model(
                arch, pretrained=False, num_classes=0, img_size=self.img_size,
                pos_drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                attn_layer=GuidedAttention, **timm_kwargs)
        except TypeError as error:  # other families reject the ViT arguments
            if "'attn_layer'" in str(error):
                raise TypeError(
                    f'timm {timm.__version__} builds {arch!r} without attn_layer, which '
                    'PromptedViT needs: install timm>=1.0.23 (setup.py pins it)') from error
            raise TypeError(f'{not_a_vit} ({error})') from error
        if not isinstance(trunk, VisionTransformer):
            raise TypeError(f'{not_a_vit} (it builds a {type(trunk).__name__})')
        if not self.final_norm:
            trunk.norm = nn.Identity()  # unused modules would be dead weights (and DDP errors)
        return trunk

    def _set_cls_token(self, with_cls_token: bool, output_cls_token: bool, guided: bool):
        has_cls = self.trunk.cls_token is not None
        if output_cls_token and not (with_cls_token and has_cls):
            raise ValueError(
                'output_cls_token=True returns the CLS token with every map, so it needs '
                'with_cls_token=True and a trunk with a CLS token (mmseg asserts the same)')
        if guided and not has_cls:
            raise ValueError('guided_blocks need a CLS token (the CLS metric loss); pick a '
                             'timm arch with class_token=True')
        if guided and not with_cls_token:
            raise ValueError(
                'guided_blocks need the CLS token: their CLS metric loss pulls the guided '
                'prompts towards the CLS query, but with_cls_token=False drops it. Set '
                'with_cls_token=True (for a config that sets False, e.g. mmseg\'s SETR-MLA: '
                'the trunk was pretrained with its CLS token, so keeping it is safe), or '
                'guided_blocks=() for plain VPT-Deep')
        self.with_cls_token = with_cls_token and has_cls
        self.output_cls_token = output_cls_token
        self.drop_cls_token = has_cls and not with_cls_token

    def _block_index(self, index: int, what: str) -> int:
        if not -self.depth <= index < self.depth:
            raise IndexError(f'{what} contains block {index}, but the trunk has {self.depth} '
                             f'blocks (valid: 0..{self.depth - 1}, or negative from the end)')
        return index % self.depth

    def _guided_prompt_counts(self, num_guided: Optional[int], num_extra: Optional[int]
                              ) -> Tuple[int, int]:
        if not self.guided_blocks:
            for name, value in (('num_guided_prompts', num_guided),
                                ('num_extra_prompts', num_extra)):
                if value is not None:
                    raise ValueError(f'{name}={value} is set, but there are no guided blocks '
                                     '(guided_blocks=()): set guided_blocks, or drop ' + name)
            return 0, 0
        if not self.deep_prompts:
            raise ValueError(f'guided_blocks={self.guided_blocks} give each guided block its '
                             'own prompts, but deep_prompts=False (VPT-Shallow) has prompts '
                             'in the first block only: set deep_prompts=True or '
                             'guided_blocks=()')
        num_guided = DEFAULT_NUM_GUIDED_PROMPTS if num_guided is None else num_guided
        num_extra = 0 if num_extra is None else num_extra
        if num_guided < 1 or num_extra < 0:
            raise ValueError(f'num_guided_prompts must be >= 1 and num_extra_prompts >= 0, '
                             f'got {num_guided} and {num_extra}')
        return num_guided, num_extra

    def _prompt_layout(self, num_prompts, num_extra: int) -> List[int]:
        if isinstance(num_prompts, int):
            counts = [num_prompts] * self.depth
        else:
            counts = list(num_prompts)
            if len(counts) != self.depth:
                raise ValueError(f'num_prompts has {len(counts)} entries but the trunk has '
                                 f'{self.depth} blocks: give one count per block or an int')
        if any(count < 0 for count in counts):
            raise ValueError(f'num_prompts must be >= 0, got {num_prompts}')
        if not self.deep_prompts:
            return [counts[0]] + [0] * (self.depth - 1)
        for index in self.guided_blocks:
            counts[index] = self.num_guided_prompts + num_extra
        return counts

    def _freeze(self):
        train_all = 'all' in self.frozen_exclude
        for name, param in self.trunk.named_parameters():
            param.requires_grad = train_all or any(part in name
                                                   for part in self.frozen_exclude)

    def _enable_kv_bias_offsets(self):
        for index, block in enumerate(self.trunk.blocks):
            attn = getattr(block, 'attn', None)
            if not isinstance(attn, GuidedAttention):
                raise TypeError(f'kv_bias_offset=True: block {index}\'s attention is a '
                                f'{type(attn).__name__}, not timm\'s Attention')
            if attn.qkv.bias is not None and attn.qkv.bias.requires_grad:
                raise ValueError(
                    f'kv_bias_offset=True adds trainable offsets to frozen key/value biases, '
                    f'but frozen_exclude={self.frozen_exclude} trains the biases themselves '
                    f'(blocks.{index}.attn.qkv.bias): drop one of the two')
            attn.enable_kv_bias_offset()

    def _init_prompts(self):
        # VPT's initialisation: uniform with Xavier's bound for a patch-sized fan-in.
        bound = math.sqrt(6. / float(3 * self.patch_size[0] * self.patch_size[1] +
                                     self.embed_dim))
        for prompts in self.prompts.values():
            nn.init.uniform_(prompts, -bound, bound)

    @property
    def has_kv_bias_offset(self) -> bool:
        return any(getattr(block.attn, 'has_kv_bias_offset', False)
                   for block in self.trunk.blocks)

    def trainable_parameter_counts(self) -> dict:
        counts = {'prompts': 0, 'kv_bias_offsets': 0, 'trunk': 0}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            group = 'prompts' if name.startswith('prompts.') else \
                'kv_bias_offsets' if name.endswith('kv_bias_offset') else 'trunk'
            counts[group] += param.numel()
        return counts

    # ------------------------------------------------------------------ pretrained weights
    def init_weights(self):
        init_cfg = self.init_cfg
        if init_cfg is None:
            return
        if not isinstance(init_cfg, dict) or init_cfg.get('type') != 'Pretrained':
            raise ValueError(f'PromptedViT init_cfg={init_cfg!r}: only '
                             "dict(type='Pretrained', checkpoint=path) is supported")
        self.load_pretrained(init_cfg['checkpoint'])
        self._is_init = True

    def load_pretrained(self, path: str):
        """Loads a timm- or mmseg-format ViT checkpoint into the trunk.

        Raises when trunk weights are missing (listing them); reports unexpected keys.
        """
        state = read_state_dict(path)
        source_format = 'mmseg' if is_mmseg_vit(state) else 'timm'
        if source_format == 'mmseg':
            state = mmseg_to_timm(state)
        if 'pos_embed' in state and state['pos_embed'].shape != self.trunk.pos_embed.shape:
            state['pos_embed'] = self._resize_checkpoint_pos_embed(state['pos_embed'], path)
        trunk_keys = set(self.trunk.state_dict())
        missing = sorted(k for k in trunk_keys - set(state) if not k.endswith('kv_bias_offset'))
        if missing:
            raise KeyError(
                f'{path!r} ({source_format} format) lacks {len(missing)} trunk weights of '
                f'{type(self.trunk).__name__} with depth {self.depth} and width '
                f'{self.embed_dim}: {missing[:12]}{" ..." if len(missing) > 12 else ""}. '
                'Check that the checkpoint is a ViT of the configured arch/timm_kwargs.')
        unexpected = sorted(set(state) - trunk_keys)
        try:
            self.trunk.load_state_dict({k: v for k, v in state.items() if k in trunk_keys},
                                       strict=False)
        except RuntimeError as error:
            raise RuntimeError(f'{path!r} does not fit the configured trunk: {error}') from error
        print_log(f'PromptedViT: loaded {len(trunk_keys) - len(missing)} trunk tensors from '
                  f'{path} ({source_format} format)', logger='current')
        if unexpected:
            print_log(f'PromptedViT: ignored {len(unexpected)} checkpoint keys the trunk does '
                      f'not use: {unexpected[:12]}', logger='current', level=30)

    def _resize_checkpoint_pos_embed(self, pos_embed: torch.Tensor, path: str) -> torch.Tensor:
        grid_tokens = pos_embed.shape[1] - self.pos_prefix
        side = int(math.isqrt(grid_tokens))
        if side * side != grid_tokens or pos_embed.shape[-1] != self.embed_dim:
            raise ValueError(f'{path!r}: pos_embed of shape {tuple(pos_embed.shape)} does not '
                             f'fit a square grid of width {self.embed_dim} with '
                             f'{self.pos_prefix} prefix tokens')
        print_log(f'PromptedViT: resizing pos_embed from {side}x{side} to {self.pos_grid}',
                  logger='current')
        return self._resample_pos_embed(pos_embed, self.pos_grid, (side, side))

    def _resample_pos_embed(self, pos_embed: torch.Tensor, new_grid: Tuple[int, int],
                            old_grid: Tuple[int, int]) -> torch.Tensor:
        # timm's resampling without antialiasing is mmseg's VisionTransformer.resize_pos_embed
        # (F.interpolate, align_corners=False), so features agree with mmseg's ViT.
        if tuple(new_grid) == tuple(old_grid):
            return pos_embed
        return resample_abs_pos_embed(pos_embed, list(new_grid), list(old_grid),
                                      num_prefix_tokens=self.pos_prefix,
                                      interpolation=self.interpolate_mode, antialias=False)

    # ------------------------------------------------------- trainable-only checkpoints
    def frozen_trunk_state_keys(self) -> List[str]:
        """State-dict keys (relative to this backbone) that the pretrained file provides:
        frozen trunk parameters and trunk buffers. Trainable trunk tensors (BitFit, full
        fine-tuning, k/v bias offsets) are not among them."""
        trainable = {name for name, p in self.trunk.named_parameters() if p.requires_grad}
        return sorted(f'trunk.{k}' for k in self.trunk.state_dict() if k not in trainable)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._complete_trainable_only_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _complete_trainable_only_state(self, state_dict, prefix: str) -> None:
        """A trainable-only checkpoint (``tools/misc/export_trainable.py``) lacks the frozen
        trunk: refill it from ``init_cfg``'s pretrained file and check it against the
        export's trunk signature. Any loader (torch, mmengine's ``load_checkpoint``,
        ``load_from``, ``tools/test.py``) goes through here. A full state dict passes
        untouched; one missing only *some* trunk tensors too, so the usual missing-keys
        report names them.
        """
        signature = state_dict.pop(prefix + SIGNATURE_KEY, None)
        frozen = self.frozen_trunk_state_keys()
        absent = [k for k in frozen if prefix + k not in state_dict]
        if not absent or len(absent) != len(frozen):
            return
        trained = set(self.state_dict()) - set(frozen)
        if signature is None and not any(prefix + k in state_dict for k in trained):
            return  # none of this backbone's own weights either: not a trainable-only export
        path = pretrained_path(self)
        if not path:
            raise RuntimeError(
                'the checkpoint being loaded holds only the trained weights (no frozen trunk, '
                'e.g. written by tools/misc/export_trainable.py), and the backbone has no '
                "pretrained trunk to put under them. Set model.backbone.init_cfg=dict(type="
                "'Pretrained', checkpoint=<the ViT file the model was trained from>), or load "
                'the full training checkpoint instead.')
        self.load_pretrained(path)
        trunk_state = self.trunk.state_dict()
        restored = [trunk_state[k[len('trunk.'):]] for k in frozen]
        check_restored_trunk(signature, restored, path)
        for key, value in zip(frozen, restored):
            # The trunk already holds these values; listing them keeps strict loads strict.
            state_dict[prefix + key] = value

    # -------------------------------------------------------------------------- forward
    def forward(self, inputs: torch.Tensor) -> Tuple[Union[torch.Tensor, list], ...]:
        """mmseg's backbone contract: NCHW maps at ``out_indices`` (``[map, cls]`` pairs with
        ``output_cls_token``); no guidance work."""
        outs, _ = self._forward(inputs, with_guidance=False, use_prompts=True)
        return outs

    def forward_with_guidance(self, inputs: torch.Tensor, use_prompts: bool = True
                              ) -> Tuple[Tuple[torch.Tensor, ...], TrunkAuxiliary]:
        """The training forward: the feature maps plus the guided blocks' embeddings.

        ``use_prompts=False`` runs the bare pretrained trunk (the initial class statistics).
        """
        return self._forward(inputs, with_guidance=True, use_prompts=use_prompts)

    def _embed(self, inputs: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        # Pad bottom/right to a whole number of patches, as mmseg's ViT ('corner') does.
        pad_h = -inputs.shape[-2] % self.patch_size[0]
        pad_w = -inputs.shape[-1] % self.patch_size[1]
        if pad_h or pad_w:
            inputs = F.pad(inputs, (0, pad_w, 0, pad_h))
        patch_embed = self.trunk.patch_embed
        x = patch_embed.proj(inputs)
        hw_shape = (x.shape[-2], x.shape[-1])
        x = patch_embed.norm(x.flatten(2).transpose(1, 2))

        pos_embed = self._resample_pos_embed(self.trunk.pos_embed, hw_shape, self.pos_grid)
        prefix = [self.trunk.cls_token, self.trunk.reg_token]
        prefix = [t.expand(x.shape[0], -1, -1) for t in prefix if t is not None]
        if self.trunk.no_embed_class:
            x = torch.cat(prefix + [x + pos_embed], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + pos_embed
        x = self.trunk.pos_drop(x)
        if self.drop_cls_token:  # mmseg: after the position embedding, before any norm
            x = x[:, 1:]
        return self.trunk.norm_pre(x), hw_shape

    def _forward(self, inputs: torch.Tensor, with_guidance: bool, use_prompts: bool):
        x, hw_shape = self._embed(inputs)
        batch, prefix = x.shape[0], self.num_prefix
        tokens_of_prompts = 0  # prompt tokens currently in the sequence
        outs, guided = [], []
        for index, block in enumerate(self.trunk.blocks):
            if self.deep_prompts or index == 0:
                count = self.prompt_counts[index] if use_prompts else 0
                if count or tokens_of_prompts:
                    # VPT-Deep: the previous block's prompt outputs are dropped and this
                    # block gets its own fresh prompts.
                    fresh = [self.prompts[str(index)].expand(batch, -1, -1)] if count else []
                    x = torch.cat([x[:, :prefix], *fresh, x[:, prefix + tokens_of_prompts:]],
                                  dim=1)
                    tokens_of_prompts = count

            if with_guidance and index in self.guided_blocks:
                x, spaces = self._run(guided_block_forward, block, x)
                guided.append(self._split_guided_tokens(
                    index, spaces, tokens_of_prompts,
                    self.num_guided_prompts if use_prompts else 0))
            else:
                x = self._run(block, x)

            if index == self.depth - 1 and self.final_norm:
                x = self.trunk.norm(x)
            if index in self.out_indices:
                out = self._to_map(x[:, prefix + tokens_of_prompts:], hw_shape)
                outs.append([out, x[:, 0]] if self.output_cls_token else out)

        aux = None
        if with_guidance:
            aux = TrunkAuxiliary(hw_shape=hw_shape, guided=guided, last_cls=x[:, 0],
                                 last_patches=x[:, prefix + tokens_of_prompts:])
        return tuple(outs), aux

    def _split_guided_tokens(self, index: int, spaces: TokenSpaces, num_prompts: int,
                             num_guided: int) -> GuidedBlockOutput:
        prefix = self.num_prefix
        return GuidedBlockOutput(
            index,
            # Prompts are shared by the batch, so they are the same in every sample: sample 0.
            prompts=spaces.map(lambda t: t[0, prefix:prefix + num_guided]),
            cls=spaces.map(lambda t: t[:, 0]),
            patches=spaces.map(lambda t: t[:, prefix + num_prompts:]))

    def _run(self, fn, *args):
        if self.with_cp and self.training and torch.is_grad_enabled():
            return cp.checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    @staticmethod
    def _to_map(tokens: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        batch, _, channels = tokens.shape
        return tokens.reshape(batch, *hw_shape, channels).permute(0, 3, 1, 2).contiguous()
