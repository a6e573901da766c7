# DA-VPT+ on SETR-PUP ViT-L/16, PASCAL Context-59 (background ignored), 480x480, 80k
# iterations. No published target: the paper's table 2 reports the 60-class protocol
# (DA-VPT+ 50.40 / 51.28, setr_pup_davpt_plus_pascal_context.py).
_base_ = ['./setr_pup_davpt_pascal_context_59.py']
model = dict(backbone=dict(kv_bias_offset=True))
