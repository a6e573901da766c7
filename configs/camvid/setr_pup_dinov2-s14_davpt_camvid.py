# The real-data study (docs/results/camvid.md): a frozen DINOv2 ViT-S/14 with deep prompts
# under a SETR-PUP head sized for ViT-S, CamVid 11 classes, 300 iterations of 8 crops of
# 224 (CPU-sized: the study's protocol; `tools/study.py camvid run --schedule NAME` runs the
# study's other schedules). This file is DA-VPT with the paper's settings; the other tuning
# modes (linear, bias, vpt-deep, da-vpt+, full) inherit it and change what differs.
#
# Run (tools/study.py runs every variant and seed this way):
#   python tools/train.py configs/camvid/setr_pup_dinov2-s14_davpt_camvid.py \
#     --cfg-options train_dataloader.dataset.data_root=PATH/camvid \
#       val_dataloader.dataset.data_root=PATH/camvid \
#       test_dataloader.dataset.data_root=PATH/camvid \
#       model.backbone.init_cfg.checkpoint=PATH/dinov2_vits14.safetensors randomness.seed=0
_base_ = [
    'mmseg::_base_/default_runtime.py',
    '../_base_/datasets/camvid.py',
    '../_base_/models/setr_pup_dinov2-s14_davpt.py',
    '../_base_/schedules/adamw_cosine_300.py',
]
num_classes = 11
model = dict(
    data_preprocessor=dict(size={{_base_.crop_size}}),
    # M = 5 guided prompts for the 11 classes, plus 5 unguided: 10 prompts in every block.
    backbone=dict(img_size={{_base_.crop_size}}, num_guided_prompts=5, num_extra_prompts=5),
    decode_head=dict(num_classes=num_classes),
    background_classes=(),  # every CamVid class is a real class; void is ignore_index
)
train_dataloader = dict(batch_size=8, num_workers=1, persistent_workers=True)
val_dataloader = dict(batch_size=1, num_workers=1, persistent_workers=True)
test_dataloader = val_dataloader
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
