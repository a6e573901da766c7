# VPT-Deep from the same code: 10 prompts in every block, no guided block, no metric losses.
_base_ = ['./setr_pup_dinov2-s14_davpt_camvid.py']
model = dict(backbone=dict(tuning_mode='vpt-deep'), token_loss_weight=0., cls_loss_weight=0.)
custom_hooks = []
