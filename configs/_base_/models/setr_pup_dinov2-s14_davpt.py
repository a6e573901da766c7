# DA-VPT on a frozen DINOv2 ViT-S/14 under a SETR-PUP head sized for ViT-S: the model of the
# real-data studies (configs/camvid, configs/ccp). Dataset configs set the crop size,
# num_classes, the guided layout and the background classes; variants change what differs.
custom_imports = dict(imports=['davpt_seg'], allow_failed_imports=False)

embed_dim = 384
norm_cfg = dict(type='SyncBN', requires_grad=True)  # BN outside distributed runs

data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],  # ImageNet statistics, which DINOv2 was trained with
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='DAVPTEncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type='PromptedViT',
        arch='vit_small_patch14_dinov2',
        out_indices=(11, ),
        num_prompts=10,
        # A deep block of the 12, as the authors' segmentation default (block 11 of 24) is
        # a middle-to-deep one.
        guided_blocks=(8, ),
        interpolate_mode='bicubic',  # DINOv2's own position-embedding resampling
        # DINOv2 ViT-S/14 as a timm state dict (../shared/realdata/README.md says where
        # it comes from); override with --cfg-options model.backbone.init_cfg.checkpoint=...
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/dinov2_vits14.safetensors')),
    # SETR-PUP's four conv + x2 stages, 64 channels wide: at 128 channels the head costs
    # 1.45 s of a 2.4 s step on 2 cores (more than the trunk); at 64, 0.57 s. The head is
    # the same in every variant, so the comparison between tuning modes is unaffected.
    decode_head=dict(
        type='SETRUPHead',
        in_channels=embed_dim,
        channels=64,
        in_index=0,
        num_classes=None,  # the dataset config's
        dropout_ratio=0,
        norm_cfg=norm_cfg,
        num_convs=4,
        up_scale=2,
        kernel_size=3,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    # The paper's settings (section 3, docs/mapping.md): beta = gamma = 0.05, Proxy-Anchor
    # alpha 32 / delta 0.1, prompt query vs attention output, region pooling, region
    # statistics, one random present class per image.
    loss_prompt_token=dict(type='ProxyAnchorLoss', alpha=32., margin=0.1,
                           positive_average='positive_proxies', loss_weight=0.05,
                           loss_name='loss_prompt_token'),
    loss_prompt_cls=dict(type='ProxyAnchorLoss', alpha=32., margin=0.1,
                         positive_average='positive_proxies', loss_weight=0.05,
                         loss_name='loss_prompt_cls'),
    embedding_pairing='query-attention',
    detach_data=False,
    token_pooling='region',
    background_classes=(),
    class_representation='region',
    class_assignment='random',
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
custom_hooks = [dict(type='ClassPromptMappingHook', init_batches=None, interval=None)]
