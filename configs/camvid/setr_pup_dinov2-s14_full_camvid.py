# Full fine-tuning: the whole trunk trains. At the heads' AdamW lr of 1e-3 a pretrained ViT
# degrades, so the trunk takes a tenth of it (the usual full fine-tuning lr of 1e-4).
_base_ = ['./setr_pup_dinov2-s14_davpt_camvid.py']
model = dict(
    backbone=dict(frozen_exclude=('all', ), num_prompts=0,
                  guided_blocks=(), num_guided_prompts=None, num_extra_prompts=None),
    loss_prompt_token=None,
    loss_prompt_cls=None)
custom_hooks = []
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}))
