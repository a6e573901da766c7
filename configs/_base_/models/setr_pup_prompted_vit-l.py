# The DA-VPT model shared by every SETR-PUP config of ours: a frozen ViT-L/16 with deep
# prompts (PromptedViT) under SETR-PUP's decode head and three auxiliary heads, as
# FastSETRUPHead: mmseg's SETRUPHead (same arguments, parameters and function) computed in
# fewer full-resolution passes (davpt_seg/models/decode_heads/setr_up_head.py), and
# FastSegDataPreProcessor for mmseg's SegDataPreProcessor.
# Dataset configs set the class count, crop and inference mode; the tuning-mode variants
# (VPT-Deep, DA-VPT+) change one or two fields. Nothing dataset-specific lives here.
_base_ = ['mmseg::_base_/models/setr_pup.py']
custom_imports = dict(imports=['davpt_seg'], allow_failed_imports=False)

# SyncBN like mmseg's SETR; mmengine turns it into BN when not distributed.
norm_cfg = dict(type='SyncBN', requires_grad=True)
num_classes = 150

# The auxiliary heads follow mmseg's SETR-PUP ADE20K 512x512 config (two 3x3 convs each),
# one per intermediate output (blocks 9, 14, 19; the decode head reads block 23).
aux_head = dict(
    type='FastSETRUPHead',
    in_channels=1024,
    channels=256,
    num_classes=num_classes,
    dropout_ratio=0,
    norm_cfg=norm_cfg,
    act_cfg=dict(type='ReLU'),
    num_convs=2,
    kernel_size=3,
    align_corners=False,
    loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4))

model = dict(
    type='DAVPTEncoderDecoder',
    # mmseg's SegDataPreProcessor (same arguments, same output to the bit) with copies that
    # do not wait and the batch normalised as one tensor (models/data_preprocessor.py).
    data_preprocessor=dict(type='FastSegDataPreProcessor'),
    # PromptedViT loads its own weights (init_cfg); EncoderDecoder's `pretrained` would be
    # forwarded to the backbone as an unknown argument.
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='PromptedViT',
        arch='vit_large_patch16_224',
        img_size=(512, 512),
        # mmseg's SETR-PUP taps (Z10, Z15, Z20, Z24 of the SETR paper, 0-based). DA-VPT's
        # appendix A.2 lists "9, 12, 18, 24"; we keep mmseg's so that the head, the aux
        # heads and the full fine-tuning anchor (mmseg zoo) stay comparable.
        out_indices=(9, 14, 19, 23),
        # Official release, segmentation: 20 prompts per block, block 11 guided by
        # num_guided_prompts=10 (the default) prompts; the trunk frozen (frozen_exclude=()).
        num_prompts=20,
        guided_blocks=(11, ),
        interpolate_mode='bilinear',
        drop_rate=0.,
        # ImageNet-21k ViT-L/16 in timm or mmseg format (tools/model_converters/vit2mmseg.py
        # of mmseg converts the original jx_vit_large_p16_384 file).
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/vit_large_p16.pth')),
    decode_head=dict(type='FastSETRUPHead', num_classes=num_classes),
    auxiliary_head=[dict(aux_head, in_index=i) for i in range(3)],
    # beta = gamma = 0.05 and Proxy-Anchor (alpha 32, margin 0.1): the official defaults.
    loss_prompt_token=dict(type='ProxyAnchorLoss', alpha=32., margin=0.1, loss_weight=0.05,
                           loss_name='loss_prompt_token'),
    loss_prompt_cls=dict(type='ProxyAnchorLoss', alpha=32., margin=0.1, loss_weight=0.05,
                         loss_name='loss_prompt_cls'),
    token_pooling='region',
    background_classes=(),
    class_representation='region',
)

# The class -> guided-prompt mapping: k-means over the whole training set before training,
# re-clustered (warm-started) once per epoch of the train loader.
custom_hooks = [dict(type='ClassPromptMappingHook', init_batches=None, interval=None)]
