# The many-class study's protocol (docs/results/ccp.md, "A protocol with power"): the
# SETR-PUP configs of this folder with a linear head (one 1x1 conv from the 384-d patch
# tokens to the 59 classes, DINOv2's linear segmentation probe), AdamW at lr 3e-3 and 600
# iterations, the warm-up scaled with the run. This file is DA-VPT with the paper's
# settings; the other `fcn-linear_*_600it_ccp.py` configs inherit it and change what
# differs, and each equals the study variant it is named after (a test checks it).
_base_ = ['./setr_pup_dinov2-s14_davpt_ccp.py']
max_iters = 600
warmup_iters = 50
model = dict(decode_head=dict(
    _delete_=True, type='FCNHead', in_channels=384, channels=384, num_convs=0,
    concat_input=False, in_index=0, num_classes=59, dropout_ratio=0, align_corners=False,
    loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)))
optim_wrapper = dict(optimizer=dict(lr=3e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='CosineAnnealingLR', eta_min=1e-8, by_epoch=False, begin=warmup_iters,
         end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(checkpoint=dict(interval=max_iters))
