# The heads alone under the study's protocol: the frozen trunk without prompts.
_base_ = ['./fcn-linear_dinov2-s14_davpt_600it_ccp.py']
model = dict(
    backbone=dict(num_prompts=0,
                  guided_blocks=(), num_guided_prompts=None, num_extra_prompts=None),
    loss_prompt_token=None,
    loss_prompt_cls=None)
custom_hooks = []
