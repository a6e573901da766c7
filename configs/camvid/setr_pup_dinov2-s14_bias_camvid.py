# BitFit: every bias of the trunk trains with the head, no prompts.
_base_ = ['./setr_pup_dinov2-s14_davpt_camvid.py']
model = dict(
    backbone=dict(frozen_exclude=('bias', ), num_prompts=0,
                  guided_blocks=(), num_guided_prompts=None, num_extra_prompts=None),
    loss_prompt_token=None,
    loss_prompt_cls=None)
custom_hooks = []
