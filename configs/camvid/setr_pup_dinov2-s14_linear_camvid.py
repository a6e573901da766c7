# Linear probing in the segmentation sense: the frozen trunk, only the decode head trains.
_base_ = ['./setr_pup_dinov2-s14_davpt_camvid.py']
model = dict(backbone=dict(tuning_mode='linear'), token_loss_weight=0., cls_loss_weight=0.)
custom_hooks = []
