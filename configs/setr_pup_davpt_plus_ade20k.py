# DA-VPT+ (DA-VPT plus tuned attention key/value biases in every block, paper 3.5) on
# SETR-PUP ViT-L/16, ADE20K 512x512, 160k iterations, 16 images per iteration.
# Target (DA-VPT paper, table 2): mIoU 46.47 single-scale / 47.21 multi-scale, 13.7M
# trainable parameters.
_base_ = ['./setr_pup_davpt_ade20k.py']
model = dict(backbone=dict(kv_bias_offset=True))
