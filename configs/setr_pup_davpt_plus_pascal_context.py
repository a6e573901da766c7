# DA-VPT+ (plus tuned attention key/value biases) on SETR-PUP ViT-L/16, PASCAL Context-60,
# 480x480, 80k iterations, 16 images per iteration.
# Target (DA-VPT paper, table 2): mIoU 50.40 single-scale / 51.28 multi-scale.
_base_ = ['./setr_pup_davpt_pascal_context.py']
model = dict(backbone=dict(kv_bias_offset=True))
