# BitFit: every bias of the trunk trains with the head, no prompts.
_base_ = ['./setr_pup_dinov2-s14_davpt_camvid.py']
model = dict(backbone=dict(tuning_mode='bias'), token_loss_weight=0., cls_loss_weight=0.)
custom_hooks = []
