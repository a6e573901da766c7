# DA-VPT under the study's protocol with the metric losses' data side detached: the patch
# and CLS embeddings enter the losses without gradient, so the losses move the guided
# block's prompts only (docs/results/camvid.md, "Findings").
_base_ = ['./fcn-linear_dinov2-s14_davpt_600it_ccp.py']
model = dict(detach_data=True)
