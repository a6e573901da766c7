"""The benchmark's sizes and variants: the same SETR-PUP segmentor on every backbone.

* ``mmseg-full`` / ``mmseg-frozen``: mmseg's stock ``VisionTransformer`` (``nn.MultiheadAttention``
  blocks), fully fine-tuned / frozen (heads only);
* ``full`` / ``linear``: our ``PromptedViT`` (timm blocks, SDPA) with the same tokens,
  fully fine-tuned / frozen: the like-for-like comparison of the two implementations;
* ``vpt-deep``, ``da-vpt``, ``da-vpt+``: the prompt-tuning modes. All three use the same
  prompt layout (``num_prompts`` per block, ``num_guided_prompts`` in the guided blocks), so
  the token sequences are identical and DA-VPT's extra cost is the guidance alone: the
  segmentor's real training step (guided block forward, class assignment, statistics,
  both Proxy-Anchor losses). The periodic k-means re-clustering (once per epoch, in a hook)
  is not part of the step and not measured here.
"""
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

VARIANTS = ('mmseg-full', 'mmseg-frozen', 'full', 'linear', 'vpt-deep', 'da-vpt', 'da-vpt+')
REFERENCE = 'vpt-deep'
VARIANT_NOTES = {
    'mmseg-full': "mmseg VisionTransformer, everything trains",
    'mmseg-frozen': 'mmseg VisionTransformer frozen, heads train',
    'full': 'PromptedViT (ours), everything trains',
    'linear': 'PromptedViT (ours) frozen, no prompts, heads train',
    'vpt-deep': 'prompts in every block + heads',
    'da-vpt': 'VPT-Deep + metric losses on the guided block(s)',
    'da-vpt+': 'DA-VPT + k/v bias offsets',
}
SDPA_BACKENDS = ('auto', 'flash', 'efficient', 'cudnn', 'math')
# The suite's numeric modes: full fp32, TF32 matmuls/convolutions, bf16 autocast (+ TF32).
PRECISIONS = ('fp32', 'tf32', 'bf16')
# The suite's variants: the two prompt modes and the stock ViT fully fine-tuned.
SUITE_VARIANTS = ('mmseg-full', 'vpt-deep', 'da-vpt')


@dataclass
class Setting:
    """One benchmark size. ``num_prompts`` everywhere but the guided blocks."""
    name: str
    description: str
    arch: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    img_size: int
    batch_size: int
    out_indices: Tuple[int, ...]
    guided_blocks: Tuple[int, ...]
    num_prompts: int
    num_guided_prompts: int
    head_channels: int
    num_classes: int
    decode_convs: int = 4
    aux_convs: int = 2
    timm_kwargs: dict = field(default_factory=dict)

    @property
    def prompt_layout(self) -> List[int]:
        return [self.num_guided_prompts if i in self.guided_blocks else self.num_prompts
                for i in range(self.depth)]

    @property
    def patch_tokens(self) -> int:
        return (self.img_size // self.patch_size) ** 2


SETTINGS = {
    # The paper's segmentation setting: SETR-PUP on ViT-L/16, 512x512, batch 2 per GPU.
    'vit-l-512': Setting(
        name='vit-l-512', description='ViT-L/16, 512x512, batch 2 (SETR-PUP, ADE20K heads)',
        arch='vit_large_patch16_224', embed_dim=1024, depth=24, num_heads=16, patch_size=16,
        img_size=512, batch_size=2, out_indices=(9, 14, 19, 23), guided_blocks=(11, ),
        num_prompts=20, num_guided_prompts=10, head_channels=256, num_classes=150),
    # A CPU-sized copy: ViT-S/16 at 256x256 (256 patch tokens), the same head structure at
    # a quarter of the channels, the same prompt counts and block proportions.
    'cpu': Setting(
        name='cpu', description='ViT-S/16, 256x256, batch 2 (SETR-PUP heads, 64 channels)',
        arch='vit_small_patch16_224', embed_dim=384, depth=12, num_heads=6, patch_size=16,
        img_size=256, batch_size=2, out_indices=(4, 7, 9, 11), guided_blocks=(5, ),
        num_prompts=20, num_guided_prompts=10, head_channels=64, num_classes=150),
    # For tests: seconds end to end.
    'tiny': Setting(
        name='tiny', description='4 blocks of width 32, 32x32, batch 2 (tests only)',
        arch='vit_base_patch16_224', embed_dim=32, depth=4, num_heads=2, patch_size=8,
        img_size=32, batch_size=2, out_indices=(1, 2, 3), guided_blocks=(2, ),
        num_prompts=3, num_guided_prompts=3, head_channels=16, num_classes=6,
        timm_kwargs=dict(patch_size=8, embed_dim=32, depth=4, num_heads=2)),
}
SETTING_ALIASES = {'gpu': 'vit-l-512'}


def resolve_setting(name: str, batch_size: Optional[int] = None,
                    img_size: Optional[int] = None) -> Setting:
    key = SETTING_ALIASES.get(name, name)
    if key not in SETTINGS:
        raise ValueError(f'unknown setting {name!r}: choose one of '
                         f'{sorted(SETTINGS) + sorted(SETTING_ALIASES)}')
    setting = Setting(**asdict(SETTINGS[key]))
    if batch_size:
        setting.batch_size = batch_size
    if img_size:
        if img_size % setting.patch_size:
            raise ValueError(f'img_size {img_size} is not a multiple of the patch size '
                             f'{setting.patch_size}')
        setting.img_size = img_size
    return setting


# --------------------------------------------------------------------------- model configs
# The decode heads: ``fast`` is davpt-seg's FastSETRUPHead (what its configs use: the same
# function and parameters, fewer full-resolution passes), ``mmseg`` mmseg's SETRUPHead.
HEADS = {'fast': 'FastSETRUPHead', 'mmseg': 'SETRUPHead'}


def segmentor_cfg(setting: Setting, variant: str, with_cp: bool = False,
                  head: Optional[str] = None, compile_regions=False) -> dict:
    """The variant's segmentor: SETR-PUP heads of the same shape on every backbone.

    ``head``: a key of ``HEADS``; default: mmseg's for the stock ``mmseg-*`` variants (what
    a user of mmseg runs), ours for the rest (what our configs run). ``compile_regions``:
    ``DAVPTEncoderDecoder``'s switch (not for the ``mmseg-*`` variants)."""
    from mmengine.config import ConfigDict
    if variant not in VARIANTS:
        raise ValueError(f'unknown variant {variant!r}: choose from {VARIANTS}')
    head = head or ('mmseg' if variant.startswith('mmseg-') else 'fast')
    if head not in HEADS:
        raise ValueError(f'head={head!r} is not one of {sorted(HEADS)}')
    if compile_regions and variant.startswith('mmseg-'):
        raise ValueError(f'compile_regions is a DAVPTEncoderDecoder switch; {variant} is '
                         "mmseg's EncoderDecoder")
    norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN in the multi-GPU configs

    def head_cfg(in_index, num_convs, up_scale, weight):
        return dict(type=HEADS[head], in_channels=setting.embed_dim,
                    channels=setting.head_channels, in_index=in_index,
                    num_classes=setting.num_classes, dropout_ratio=0, norm_cfg=norm_cfg,
                    num_convs=num_convs, up_scale=up_scale, kernel_size=3,
                    align_corners=False,
                    loss_decode=dict(type='CrossEntropyLoss', loss_weight=weight))

    num_outs = len(setting.out_indices)
    decode_head = head_cfg(num_outs - 1, setting.decode_convs, 2, 1.0)
    auxiliary_head = [head_cfg(i, setting.aux_convs, 4, 0.4) for i in range(num_outs - 1)]
    if variant.startswith('mmseg-'):
        backbone = dict(
            type='VisionTransformer', img_size=(setting.img_size, setting.img_size),
            patch_size=setting.patch_size, in_channels=3, embed_dims=setting.embed_dim,
            num_layers=setting.depth, num_heads=setting.num_heads, mlp_ratio=4,
            out_indices=setting.out_indices, qkv_bias=True, drop_rate=0.,
            attn_drop_rate=0., drop_path_rate=0., with_cls_token=True,
            norm_cfg=dict(type='LN', eps=1e-6), final_norm=False,
            interpolate_mode='bilinear', with_cp=with_cp,
            frozen_exclude=['all'] if variant == 'mmseg-full' else [])
        segmentor = dict(type='EncoderDecoder')
    else:
        backbone = dict(
            type='PromptedViT', arch=setting.arch, img_size=setting.img_size,
            timm_kwargs=dict(setting.timm_kwargs), out_indices=setting.out_indices,
            tuning_mode=variant, interpolate_mode='bilinear', with_cp=with_cp)
        segmentor = dict(type='DAVPTEncoderDecoder', compile_regions=compile_regions)
        if variant == 'vpt-deep':  # the guided layout's token counts, without guidance
            backbone.update(num_prompts=setting.prompt_layout)
        elif variant in ('da-vpt', 'da-vpt+'):
            backbone.update(num_prompts=setting.num_prompts,
                            guided_blocks=setting.guided_blocks,
                            num_guided_prompts=setting.num_guided_prompts)
            segmentor.update(
                loss_prompt_token=dict(type='ProxyAnchorLoss', loss_weight=0.05,
                                       loss_name='loss_prompt_token'),
                loss_prompt_cls=dict(type='ProxyAnchorLoss', loss_weight=0.05,
                                     loss_name='loss_prompt_cls'))
    segmentor.update(
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                               seg_pad_val=255),
        backbone=backbone, decode_head=decode_head, auxiliary_head=auxiliary_head,
        train_cfg=ConfigDict(), test_cfg=ConfigDict(mode='whole'))
    return segmentor
