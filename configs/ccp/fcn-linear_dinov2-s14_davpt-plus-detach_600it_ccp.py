# DA-VPT+ under the study's protocol with the metric losses' data side detached.
_base_ = ['./fcn-linear_dinov2-s14_davpt-plus_600it_ccp.py']
model = dict(detach_data=True)
