# DA-VPT on SETR-PUP, ViT-L/16 (ImageNet-21k, frozen), PASCAL Context with 60 classes
# (class 0 = background), 480x480, 80k iterations, 16 images per iteration (8 GPUs x 2).
# Target (DA-VPT paper, table 2): mIoU 50.15 single-scale / 51.04 multi-scale.
# The 59-class protocol (background ignored): setr_pup_davpt_pascal_context_59.py.
_base_ = [
    './_base_/models/setr_pup_prompted_vit-l.py',
    'mmseg::_base_/datasets/pascal_context.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/schedules/adamw_cosine_80k.py',
]
num_classes = 60
crop_size = (480, 480)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(img_size=crop_size),
    decode_head=dict(num_classes=num_classes),
    auxiliary_head=[dict(head, num_classes=num_classes) for head in _base_.model.auxiliary_head],
    # Background covers most pixels of most images: assigning it would tie a guided prompt
    # to "everything else" (paper A.2: "one non-background class"). It is still segmented.
    background_classes=(0, ),
    # mmseg's PASCAL Context inference: 480 windows, stride 320.
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(320, 320)),
)
# mmseg's 60-class dataset base has no TTA pipeline; the same as its 59-class one.
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in img_ratios],
            [
                dict(type='RandomFlip', prob=0., direction='horizontal'),
                dict(type='RandomFlip', prob=1., direction='horizontal')
            ],
            [dict(type='LoadAnnotations')],
            [dict(type='PackSegInputs')],
        ])
]
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
