# DA-VPT under the study's protocol with the last block (11) guided instead of block 8: the
# one switch of the paper's recipe that beat VPT-Deep on every seed of the CCP study
# (docs/results/ccp.md, "Findings"); written out for the rerun on the held-back photos.
_base_ = ['./fcn-linear_dinov2-s14_davpt_600it_ccp.py']
model = dict(backbone=dict(guided_blocks=(11, )))
