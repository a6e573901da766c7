# DA-VPT+: DA-VPT plus learnable key/value bias offsets in every block (paper 3.5).
_base_ = ['./setr_pup_dinov2-s14_davpt_ccp.py']
model = dict(backbone=dict(kv_bias_offset=True))
