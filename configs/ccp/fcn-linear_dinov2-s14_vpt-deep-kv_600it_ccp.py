# DA-VPT+'s control under the study's protocol: VPT-Deep plus DA-VPT+'s key/value bias
# offsets in every block, no guidance.
_base_ = ['./fcn-linear_dinov2-s14_vpt-deep_600it_ccp.py']
model = dict(backbone=dict(kv_bias_offset=True))
