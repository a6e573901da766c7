# The real-data study (docs/results/camvid.md): a frozen DINOv2 ViT-S/14 with deep prompts
# under a SETR-PUP head sized for ViT-S, CamVid 11 classes, 300 iterations of 8 crops of
# 224 (CPU-sized: the study's protocol; `tools/study.py run --iters N` scales it). This
# file is DA-VPT with the paper's settings; the other tuning modes (linear, bias, vpt-deep,
# da-vpt+, full) inherit it and change what differs.
#
# Run (tools/study.py runs every variant and seed this way):
#   python tools/train.py configs/camvid/setr_pup_dinov2-s14_davpt_camvid.py \
#     --cfg-options train_dataloader.dataset.data_root=PATH/camvid \
#       val_dataloader.dataset.data_root=PATH/camvid test_dataloader.dataset.data_root=PATH/camvid \
#       model.backbone.init_cfg.checkpoint=PATH/dinov2_vits14.safetensors randomness.seed=0
_base_ = [
    'mmseg::_base_/default_runtime.py',
    '../_base_/datasets/camvid.py',
]
custom_imports = dict(imports=['davpt_seg'], allow_failed_imports=False)

num_classes = 11
crop_size = (224, 224)
embed_dim = 384
max_iters = 300
warmup_iters = 25
norm_cfg = dict(type='SyncBN', requires_grad=True)  # BN outside distributed runs

data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],  # ImageNet statistics, which DINOv2 was trained with
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size)
model = dict(
    type='DAVPTEncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type='PromptedViT',
        arch='vit_small_patch14_dinov2',
        img_size=crop_size,
        out_indices=(11, ),
        tuning_mode='da-vpt',
        num_prompts=10,
        # A deep block of the 12, as the authors' segmentation default (block 11 of 24) is
        # a middle-to-deep one; M = 5 guided prompts for the 11 classes, plus 5 unguided.
        guided_blocks=(8, ),
        num_guided_prompts=5,
        num_extra_prompts=5,
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
        num_classes=num_classes,
        dropout_ratio=0,
        norm_cfg=norm_cfg,
        num_convs=4,
        up_scale=2,
        kernel_size=3,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    # The paper's settings (DESIGN 1.2): beta = gamma = 0.05, Proxy-Anchor alpha 32 /
    # delta 0.1, prompt query vs attention output, region pooling, region statistics.
    token_loss_weight=0.05,
    cls_loss_weight=0.05,
    metric_loss=dict(type='ProxyAnchorLoss', alpha=32., margin=0.1,
                     positive_average='positive_proxies'),
    embedding_pairing='query-attention',
    detach_data=False,
    token_pooling='region',
    background_classes=(),  # every CamVid class is a real class; void is ignore_index
    class_representation='region',
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
custom_hooks = [dict(type='SemanticMappingHook', init_batches=None, interval=None)]

train_dataloader = dict(batch_size=8, num_workers=1, persistent_workers=True)
val_dataloader = dict(batch_size=1, num_workers=1, persistent_workers=True)
test_dataloader = val_dataloader

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='CosineAnnealingLR', eta_min=1e-8, by_epoch=False, begin=warmup_iters,
         end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
log_processor = dict(by_epoch=False)
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
