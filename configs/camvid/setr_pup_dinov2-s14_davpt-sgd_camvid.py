# DA-VPT with the authors' segmentation recipe instead of ours: SGD with momentum 0.9,
# lr 1e-3, no weight decay, poly decay (power 0.9), the decode head at 10x the lr.
_base_ = ['./setr_pup_dinov2-s14_davpt_camvid.py']
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=1e-3, momentum=0.9, weight_decay=0.),
    paramwise_cfg=dict(custom_keys={
        'decode_head': dict(lr_mult=10.),
        'auxiliary_head': dict(lr_mult=10.)
    }))
param_scheduler = [
    dict(type='PolyLR', eta_min=0., power=0.9, by_epoch=False, begin=0,
         end={{_base_.max_iters}}),
]
