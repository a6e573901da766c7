# VPT-Deep under the study's protocol: 10 prompts in every block, no guided block, no
# metric losses.
_base_ = ['./fcn-linear_dinov2-s14_davpt_600it_ccp.py']
model = dict(
    backbone=dict(guided_blocks=(), num_guided_prompts=None, num_extra_prompts=None),
    loss_prompt_token=None,
    loss_prompt_cls=None)
custom_hooks = []
