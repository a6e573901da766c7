# DA-VPT+ under the study's protocol: DA-VPT plus learnable key/value bias offsets in
# every block (paper 3.5).
_base_ = ['./fcn-linear_dinov2-s14_davpt_600it_ccp.py']
model = dict(backbone=dict(kv_bias_offset=True))
