# The control for DA-VPT+: VPT-Deep plus DA-VPT+'s learnable key/value bias offsets in every
# block, without guidance. DA-VPT+ minus this is what the class guidance adds.
_base_ = ['./setr_pup_dinov2-s14_vpt-deep_camvid.py']
model = dict(backbone=dict(kv_bias_offset=True))
