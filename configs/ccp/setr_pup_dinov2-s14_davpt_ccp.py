# The many-class study (docs/results/ccp.md): a frozen DINOv2 ViT-S/14 with deep prompts
# under a SETR-PUP head sized for ViT-S, Clothing Co-Parsing with 59 classes and a
# background class, 8 crops of 224 per iteration (CPU-sized; `tools/study.py ccp run
# --schedule NAME` runs the study's other schedules). This file is DA-VPT with the paper's
# settings; the other variants inherit it and change what differs.
#
#   python tools/train.py configs/ccp/setr_pup_dinov2-s14_davpt_ccp.py \
#     --cfg-options train_dataloader.dataset.data_root=PATH/ccp \
#       val_dataloader.dataset.data_root=PATH/ccp test_dataloader.dataset.data_root=PATH/ccp \
#       model.backbone.init_cfg.checkpoint=PATH/dinov2_vits14.safetensors randomness.seed=0
_base_ = [
    'mmseg::_base_/default_runtime.py',
    '../_base_/datasets/ccp.py',
    '../_base_/models/setr_pup_dinov2-s14_davpt.py',
    '../_base_/schedules/adamw_cosine_300.py',
]
num_classes = 59
model = dict(
    data_preprocessor=dict(size={{_base_.crop_size}}),
    # M = 10 guided prompts for the 58 non-background classes (the official release's
    # count); every block holds 10 prompts, so the token budget is VPT-Deep's.
    backbone=dict(img_size={{_base_.crop_size}}, num_guided_prompts=10, num_extra_prompts=0),
    decode_head=dict(num_classes=num_classes),
    # Background covers 77 % of the pixels: predicted and scored, never assigned to a
    # guided prompt (paper A.2: "one non-background class").
    background_classes=(0, ),
)
train_dataloader = dict(batch_size=8, num_workers=1, persistent_workers=True)
val_dataloader = dict(batch_size=1, num_workers=1, persistent_workers=True)
test_dataloader = val_dataloader
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
