# The VPT-Deep baseline from the same code: 20 prompts in every block, no guided blocks,
# no metric losses, no class mapping. SETR-PUP ViT-L/16, ADE20K 512x512, 160k iterations.
# Target (DA-VPT paper, table 2): mIoU 44.08 single-scale / 46.01 multi-scale, 13.6M
# trainable parameters.
_base_ = ['./setr_pup_davpt_ade20k.py']
model = dict(
    backbone=dict(guided_blocks=()), loss_prompt_token=None, loss_prompt_cls=None)
custom_hooks = []  # no guided prompts, so no class mapping to cluster
