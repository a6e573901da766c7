# The CPU demo behind `make demo` (tools/misc/demo.py): the real DA-VPT ADE20K config, shrunk to
# a tiny randomly initialised ViT (no pretrained weights can be downloaded here) on a
# synthetic dataset in ADE20K's layout (harness.synthetic.make_ade_like_dataset).
# Everything else is the real path: PromptedViT with a guided block,
# DAVPTEncoderDecoder with both metric losses, the ClassPromptMappingHook, AdamW + cosine,
# reduce_zero_label, single-scale and --tta multi-scale testing. Not a benchmark.
_base_ = ['./setr_pup_davpt_ade20k.py']

data_root = 'work_dirs/demo/data'  # tools/misc/demo.py writes the data here (or --work-dir/data)
num_classes = 6  # labels 1..6 in the PNGs; 0 = "other", ignored (reduce_zero_label)
crop_size = (64, 64)
max_iters = 600  # tools/misc/demo.py --iters overrides it
embed_dim = 64

data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        img_size=crop_size,
        timm_kwargs=dict(patch_size=8, embed_dim=embed_dim, depth=6, num_heads=4),
        out_indices=(1, 3, 4, 5),
        num_prompts=4,
        guided_blocks=(3, ),
        num_guided_prompts=3,  # fewer than the 6 classes: each prompt covers a cluster
        num_extra_prompts=2,
        init_cfg=None),  # random trunk (timm's init), frozen like a pretrained one
    # Upsampling stops at the input size (8x8 tokens -> 64 px), not 2x past it as at 512 px:
    # the CPU time goes where the labels are.
    decode_head=dict(in_channels=embed_dim, channels=32, num_classes=num_classes, num_convs=3),
    auxiliary_head=[
        dict(head, in_channels=embed_dim, channels=32, num_classes=num_classes, up_scale=2)
        for head in _base_.model.auxiliary_head
    ],
    test_cfg=dict(_delete_=True, mode='whole'),
)

# The synthetic images are 64 px: no 2048x512 rescaling; the rest is ADE20K's pipeline.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(64, 64), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
dataset = dict(
    type='ADE20KDataset',
    data_root=data_root,
    # ADE20K's first class names: mmseg accepts a subset of a dataset's classes.
    metainfo=dict(classes=('wall', 'building', 'sky', 'floor', 'tree', 'ceiling')))
train_dataloader = dict(
    batch_size=8,
    num_workers=0,  # 2 cores: worker processes would only compete with the model
    persistent_workers=False,
    dataset=dict(dataset, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=False, begin=20, end=max_iters),
]
# Validate once, after the last iteration, on the checkpoint saved at that iteration:
# tools/test.py on that checkpoint must reproduce this mIoU.
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1),
    visualization=dict(type='SegVisualizationHook', draw=False))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
