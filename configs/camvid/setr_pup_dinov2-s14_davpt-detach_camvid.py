# DA-VPT as the CamVid study recommends it (docs/results/camvid.md, "Final configs"): the
# paper's DA-VPT with the metric losses' data side (the patches' attention outputs and the
# CLS query) detached. The losses then move the guided block's prompts only; with the paper's
# coupling their gradient reaches every earlier block's prompts through the guided block's
# input, outweighs the segmentation gradient there 6-9x at the start of training, and costs
# 1.3 points of val mIoU on average. The study's `detach-data` variant.
_base_ = ['./setr_pup_dinov2-s14_davpt_camvid.py']
model = dict(detach_data=True)
