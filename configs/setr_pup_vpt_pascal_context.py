# The VPT-Deep baseline (20 prompts per block, no guidance) on SETR-PUP ViT-L/16,
# PASCAL Context-60, 480x480, 80k iterations, 16 images per iteration.
# Target (DA-VPT paper, table 2): mIoU 49.51 single-scale / 50.46 multi-scale.
_base_ = ['./setr_pup_davpt_pascal_context.py']
model = dict(
    backbone=dict(guided_blocks=()), loss_prompt_token=None, loss_prompt_cls=None)
custom_hooks = []  # no guided prompts, so no class mapping to cluster
