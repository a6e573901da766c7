# DA-VPT+ as the CamVid study recommends it (docs/results/camvid.md, "Final configs"):
# DA-VPT+ (learnable key/value bias offsets) with the metric losses' data side detached,
# as in setr_pup_dinov2-s14_davpt-detach_camvid.py. The study's `davpt-plus-detach` variant.
_base_ = ['./setr_pup_dinov2-s14_davpt-plus_camvid.py']
model = dict(detach_data=True)
