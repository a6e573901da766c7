# The same optimisation for SETR's 80k-iteration PASCAL Context schedule.
_base_ = ['./adamw_cosine_160k.py']

max_iters = 80000
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0,
         end={{_base_.warmup_iters}}),
    dict(type='CosineAnnealingLR', eta_min=1e-8, by_epoch=False,
         begin={{_base_.warmup_iters}}, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=8000)
default_hooks = dict(checkpoint=dict(interval=8000))
