# DA-VPT on SETR-PUP, ViT-L/16 (ImageNet-21k, frozen), ADE20K 512x512, 160k iterations,
# 16 images per iteration (8 GPUs x 2; keep the product at 16 on other layouts, e.g.
# 4 GPUs with train_dataloader.batch_size=4).
# Target (DA-VPT paper, table 2): mIoU 45.10 single-scale / 47.07 multi-scale, 13.6M
# trainable parameters. Train: tools/dist_train.sh configs/setr_pup_davpt_ade20k.py 8
# Test: tools/test.py CONFIG CHECKPOINT [--tta]   (--tta: multi-scale 0.5-1.75 + flip)
_base_ = [
    './_base_/models/setr_pup_prompted_vit-l.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/schedules/adamw_cosine_160k.py',
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(img_size=crop_size),
    # ADE20K under reduce_zero_label has no background among its 150 classes.
    background_classes=(),
    # mmseg's SETR ADE20K inference: 512 windows, stride 341.
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)),
)
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
