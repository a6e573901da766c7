# The VPT-Deep baseline on SETR-PUP ViT-L/16, PASCAL Context-59 (background ignored),
# 480x480, 80k iterations. No published target: the paper's table 2 reports the 60-class
# protocol (VPT 49.51 / 50.46, setr_pup_vpt_pascal_context.py).
_base_ = ['./setr_pup_davpt_pascal_context_59.py']
model = dict(
    backbone=dict(guided_blocks=()), loss_prompt_token=None, loss_prompt_cls=None)
custom_hooks = []  # no guided prompts, so no class mapping to cluster
