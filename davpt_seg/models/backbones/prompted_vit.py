"""A frozen timm ViT with deep visual prompts, distribution-guided blocks and k/v bias tuning.

The trunk is any timm ``VisionTransformer`` built with ``pretrained=False`` and loaded from a
local file, so supervised IN-21k, MAE, MoCo v3 or DINOv2 weights all work. Outputs are
mmseg's ``VisionTransformer``'s: a tuple of NCHW patch-token maps at ``out_indices``, or of
``[map, cls_token]`` pairs with ``output_cls_token`` (DPT), so every mmseg ViT head and neck
(SETR-PUP/MLA/Naive, UperNet with or without ``MultiLevelNeck``, Segmenter, DPT) runs
unchanged.
"""
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer

from ...utils.trainable_checkpoint import restore_frozen_trunk_pre_hook
from .checkpoint_io import is_mmseg_vit, mmseg_to_timm, read_state_dict, resize_pos_embed

TUNING_MODES = ('linear', 'bias', 'vpt-shallow', 'vpt-deep', 'da-vpt', 'da-vpt+', 'full')
GUIDED_MODES = ('da-vpt', 'da-vpt+')
PROMPTED_MODES = ('vpt-shallow', 'vpt-deep', 'da-vpt', 'da-vpt+')


# The spaces in which a guided block exposes its tokens to the metric losses.
TOKEN_SPACES = ('input', 'query', 'key', 'attention')


@dataclass
class TokenSpaces:
    """One group of tokens of a guided block, in every space the metric losses can compare.

    ``input``: the block's input (before ``norm1``, width ``D``); ``query`` / ``key``: what
    the attention compares (heads concatenated, width ``C``); ``attention``: the attention
    output, heads concatenated, before the output projection (width ``C``).
    """
    input: torch.Tensor
    query: torch.Tensor
    key: torch.Tensor
    attention: torch.Tensor

    def __getitem__(self, space: str) -> torch.Tensor:
        if space not in TOKEN_SPACES:
            raise KeyError(f'token space {space!r} is not one of {TOKEN_SPACES}')
        return getattr(self, space)


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


class KVBiasOffsetLinear(nn.Linear):
    """The fused qkv projection with a learnable offset on its key and value biases.

    The pretrained weight and bias stay frozen and untouched; the offset starts at zero, so
    the block computes exactly what the pretrained one did until training moves it.

    Only the value half does anything in a standard ViT block. A key bias ``b`` adds
    ``q . b`` to every logit of query ``q``'s row, and softmax is invariant to a per-row
    shift: the block's output, and therefore every gradient reaching the key half, is zero
    (up to rounding; ``tests/test_kv_bias_offset.py``). The key half only matters when
    something non-linear acts on the keys between the bias and the logits, i.e. a trunk with
    k-normalisation (timm's ``qk_norm=True``), or when a metric loss compares keys
    themselves (``embedding_pairing='key-query'`` moves the guided prompts' keys without
    changing the segmentation). It is kept, per the paper's DA-VPT+ (k and v biases), so
    that the trainable-parameter count matches the paper and checkpoints keep one layout.
    """

    def __init__(self, qkv: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = qkv.in_features, qkv.out_features
        self.weight = qkv.weight
        self.bias = qkv.bias
        self.query_width = qkv.out_features // 3
        self.kv_bias_offset = nn.Parameter(
            torch.zeros(2 * self.query_width, device=qkv.weight.device,
                        dtype=qkv.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = F.pad(self.kv_bias_offset, (self.query_width, 0))
        bias = offset if self.bias is None else self.bias + offset
        return F.linear(x, self.weight, bias)


def block_qkv(block: Block, x: torch.Tensor
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-head (B, heads, L, head_dim) query, key and value that ``block`` attends with,
    for its input ``x`` (before ``norm1``): the same ones as its own forward."""
    attn: Attention = block.attn
    batch, length, _ = x.shape
    qkv = attn.qkv(block.norm1(x)).reshape(batch, length, 3, attn.num_heads, attn.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def guided_block_forward(block: Block, x: torch.Tensor, num_prefix: int,
                         num_prompts: int, num_guided: int, training: bool
                         ) -> Tuple[torch.Tensor, Tuple[TokenSpaces, TokenSpaces, TokenSpaces]]:
    """A timm ``Block`` forward that also returns the guided prompts, CLS and patch tokens
    in every space of ``TokenSpaces``.

    Same arithmetic as ``Block.forward`` with fused attention; the attention map itself is
    never materialised, so SDPA's flash / memory-efficient kernels stay usable.
    """
    attn: Attention = block.attn
    batch, length, _ = x.shape
    q, k, v = block_qkv(block, x)
    out = F.scaled_dot_product_attention(
        q, k, v, dropout_p=attn.attn_drop.p if training else 0.)
    out = attn.norm(out.transpose(1, 2).reshape(batch, length, attn.attn_dim))
    x_out = x + block.drop_path1(block.ls1(attn.proj_drop(attn.proj(out))))
    x_out = x_out + block.drop_path2(block.ls2(block.mlp(block.norm2(x_out))))

    def heads_joined(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2).reshape(batch, length, attn.attn_dim)

    spaces = dict(input=x, query=heads_joined(q), key=heads_joined(k), attention=out)
    patch_start = num_prefix + num_prompts
    # Prompts are shared by the batch, so they are the same in every sample: take sample 0.
    prompts = TokenSpaces(**{name: t[0, num_prefix:num_prefix + num_guided]
                             for name, t in spaces.items()})
    cls = TokenSpaces(**{name: t[:, 0] for name, t in spaces.items()})
    patches = TokenSpaces(**{name: t[:, patch_start:] for name, t in spaces.items()})
    return x_out, (prompts, cls, patches)


@MODELS.register_module()
class PromptedViT(BaseModule):
    """ViT with VPT prompts and DA-VPT guided blocks, built from a timm architecture.

    Args:
        arch: timm model name of a ``VisionTransformer`` (e.g. ``'vit_large_patch16_224'``).
        img_size: training crop size; the position embedding is kept at this grid and
            resampled at run time for other input sizes.
        out_indices: blocks (0-based) whose patch tokens are returned as NCHW maps.
        tuning_mode: one of ``TUNING_MODES``: what trains besides the heads.
            ``linear``: nothing; ``bias``: every trunk bias (BitFit); ``vpt-shallow``:
            prompts at the input only; ``vpt-deep``: fresh prompts in every block;
            ``da-vpt``: VPT-Deep with guided blocks; ``da-vpt+``: also the attention key and
            value biases of every block; ``full``: the whole trunk.
        num_prompts: prompts per block (an int, or one count per block) outside guided blocks.
        guided_blocks: blocks whose prompts are tied to class clusters (``da-vpt`` modes).
        num_guided_prompts: ``M``, the guided prompts of each guided block.
        num_extra_prompts: ``E``, unguided prompts after the guided ones in guided blocks.
        interpolate_mode: position-embedding resampling (mmseg SETR uses ``'bilinear'``).
        final_norm: apply the trunk's final norm after the last block (mmseg's meaning: it
            changes the last block's output map, and the CLS token it returns).
        with_cls_token: ``False`` drops the CLS token (after its position embedding is
            added) before the first block, as mmseg's ``VisionTransformer`` does (SETR-MLA's
            config). The ``da-vpt`` modes need it: their CLS metric loss compares with it.
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
                 out_indices: Sequence[int] = (9, 14, 19, 23),
                 tuning_mode: str = 'da-vpt',
                 num_prompts: Union[int, Sequence[int]] = 20,
                 guided_blocks: Sequence[int] = (11, ),
                 num_guided_prompts: int = 10,
                 num_extra_prompts: int = 0,
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
        if tuning_mode not in TUNING_MODES:
            raise ValueError(f'tuning_mode={tuning_mode!r} is not one of {TUNING_MODES}')
        self.tuning_mode = tuning_mode
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.interpolate_mode = interpolate_mode
        self.final_norm = final_norm
        self.with_cp = with_cp

        not_a_vit = (f'arch={arch!r} is not a timm VisionTransformer; PromptedViT needs a '
                     'ViT architecture (vit_*, deit*, ...)')
        try:
            trunk = timm.create_model(
                arch, pretrained=False, num_classes=0, img_size=self.img_size,
                pos_drop_rate=drop_rate, drop_path_rate=drop_path_rate, **(timm_kwargs or {}))
        except TypeError as error:  # other families reject the ViT arguments
            raise TypeError(f'{not_a_vit} ({error})') from error
        if not isinstance(trunk, VisionTransformer):
            raise TypeError(f'{not_a_vit} (it builds a {type(trunk).__name__})')
        if not final_norm:
            trunk.norm = nn.Identity()  # unused modules would be dead weights (and DDP errors)
        self.trunk = trunk
        self.depth = len(trunk.blocks)
        self.embed_dim = trunk.embed_dim
        self.patch_size = trunk.patch_embed.patch_size
        self.pos_prefix = 0 if trunk.no_embed_class else trunk.num_prefix_tokens
        self.pos_grid = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self._set_cls_token(with_cls_token, output_cls_token, tuning_mode)
        # Prefix tokens (CLS, registers) in the sequence the blocks see.
        self.num_prefix = trunk.num_prefix_tokens - int(self.drop_cls_token)

        if isinstance(out_indices, int):  # mmseg accepts one index; -1 is the last block
            out_indices = (out_indices, )
        self.out_indices = tuple(self._block_index(i, 'out_indices') for i in out_indices)
        self.guided_blocks = tuple(sorted(
            self._block_index(i, 'guided_blocks') for i in guided_blocks)) \
            if tuning_mode in GUIDED_MODES else ()
        self.num_guided_prompts = num_guided_prompts if self.guided_blocks else 0
        self.prompt_counts = self._prompt_layout(num_prompts, num_guided_prompts,
                                                 num_extra_prompts)
        self._check_guided_blocks()
        # Keyed by block index; blocks without prompts have no entry (no empty parameters).
        self.prompts = nn.ParameterDict({
            str(index): nn.Parameter(torch.zeros(1, count, self.embed_dim))
            for index, count in enumerate(self.prompt_counts) if count
        })
        if tuning_mode == 'da-vpt+':
            for block in trunk.blocks:
                block.attn.qkv = KVBiasOffsetLinear(block.attn.qkv)
        self._freeze()
        self._init_prompts()
        # Trainable-only checkpoints (tools/export_trainable.py) lack the frozen trunk: any
        # load_state_dict of one first restores the trunk from init_cfg's pretrained file.
        self.register_load_state_dict_pre_hook(restore_frozen_trunk_pre_hook)

    # ----------------------------------------------------------------- construction helpers
    def _set_cls_token(self, with_cls_token: bool, output_cls_token: bool, tuning_mode: str):
        has_cls = self.trunk.cls_token is not None
        if output_cls_token and not (with_cls_token and has_cls):
            raise ValueError(
                'output_cls_token=True returns the CLS token with every map, so it needs '
                'with_cls_token=True and a trunk with a CLS token (mmseg asserts the same)')
        if not with_cls_token and tuning_mode in GUIDED_MODES:
            raise ValueError(
                f'tuning_mode={tuning_mode!r} needs the CLS token: its CLS metric loss pulls '
                'the guided prompts towards the CLS query. Set with_cls_token=True (for a '
                'config that sets False, e.g. mmseg\'s SETR-MLA: the trunk was pretrained '
                "with its CLS token, so keeping it is safe), or use tuning_mode='vpt-deep'")
        self.with_cls_token = with_cls_token and has_cls
        self.output_cls_token = output_cls_token
        self.drop_cls_token = has_cls and not with_cls_token

    def _block_index(self, index: int, what: str) -> int:
        if not -self.depth <= index < self.depth:
            raise IndexError(f'{what} contains block {index}, but the trunk has {self.depth} '
                             f'blocks (valid: 0..{self.depth - 1}, or negative from the end)')
        return index % self.depth

    def _prompt_layout(self, num_prompts, num_guided, num_extra) -> List[int]:
        if isinstance(num_prompts, int):
            counts = [num_prompts] * self.depth
        else:
            counts = list(num_prompts)
            if len(counts) != self.depth:
                raise ValueError(f'num_prompts has {len(counts)} entries but the trunk has '
                                 f'{self.depth} blocks: give one count per block or an int')
        if self.tuning_mode not in PROMPTED_MODES:
            return [0] * self.depth
        if self.tuning_mode == 'vpt-shallow':
            return [counts[0]] + [0] * (self.depth - 1)
        for index in self.guided_blocks:
            if num_guided < 1:
                raise ValueError('num_guided_prompts must be >= 1 in the da-vpt modes')
            counts[index] = num_guided + num_extra
        return counts

    def _check_guided_blocks(self):
        if self.guided_blocks and self.trunk.cls_token is None:
            raise ValueError('the da-vpt modes need a CLS token (the CLS metric loss); pick a '
                             'timm arch with class_token=True')
        for index in self.guided_blocks:
            block = self.trunk.blocks[index]
            if type(block) is not Block or type(block.attn) is not Attention or \
                    getattr(block.attn, 'gate', None) is not None:
                raise TypeError(f'guided block {index} is a {type(block).__name__}; guided '
                                'blocks need timm\'s standard Block with Attention')

    def _freeze(self):
        full = self.tuning_mode == 'full'
        for name, param in self.trunk.named_parameters():
            param.requires_grad = full or name.endswith('kv_bias_offset') or (
                self.tuning_mode == 'bias' and name.endswith('bias'))

    def _init_prompts(self):
        # VPT's initialisation: uniform with Xavier's bound for a patch-sized fan-in.
        bound = math.sqrt(6. / float(3 * self.patch_size[0] * self.patch_size[1] +
                                     self.embed_dim))
        for prompts in self.prompts.values():
            nn.init.uniform_(prompts, -bound, bound)

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
        return resize_pos_embed(pos_embed, self.pos_grid, (side, side), self.pos_prefix,
                                self.interpolate_mode)

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

        pos_embed = resize_pos_embed(self.trunk.pos_embed, hw_shape, self.pos_grid,
                                     self.pos_prefix, self.interpolate_mode)
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
        deep = self.tuning_mode != 'vpt-shallow'
        tokens_of_prompts = 0  # prompt tokens currently in the sequence
        outs, guided = [], []
        for index, block in enumerate(self.trunk.blocks):
            if deep or index == 0:
                count = self.prompt_counts[index] if use_prompts else 0
                if count or tokens_of_prompts:
                    # VPT-Deep: the previous block's prompt outputs are dropped and this
                    # block gets its own fresh prompts.
                    fresh = [self.prompts[str(index)].expand(batch, -1, -1)] if count else []
                    x = torch.cat([x[:, :prefix], *fresh, x[:, prefix + tokens_of_prompts:]],
                                  dim=1)
                    tokens_of_prompts = count

            if with_guidance and index in self.guided_blocks:
                x, (prompts, cls, patches) = self._run(
                    guided_block_forward, block, x, prefix, tokens_of_prompts,
                    self.num_guided_prompts if use_prompts else 0, self.training)
                guided.append(GuidedBlockOutput(index, prompts, cls, patches))
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

    def _run(self, fn, *args):
        if self.with_cp and self.training and torch.is_grad_enabled():
            return cp.checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    @staticmethod
    def _to_map(tokens: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        batch, _, channels = tokens.shape
        return tokens.reshape(batch, *hw_shape, channels).permute(0, 3, 1, 2).contiguous()
