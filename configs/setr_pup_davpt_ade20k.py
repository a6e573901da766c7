# DA-VPT on SETR-PUP, ViT-L/16 (ImageNet-21k), ADE20K 512x512, 160k iterations.
# Target (DA-VPT paper, table 2): mIoU 45.10 single-scale / 47.07 multi-scale
# (VPT-Deep 44.08 / 46.01 from the same code with the metric losses off).
_base_ = ['mmseg::setr/setr_vit-l_pup_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['davpt_seg'], allow_failed_imports=False)

model = dict(
    type='DAVPTEncoderDecoder',
    backbone=dict(
        _delete_=True,
        type='PromptedViT',
        arch='vit_large_patch16_224',
        img_size=(512, 512),
        out_indices=(9, 14, 19, 23),
        tuning_mode='da-vpt',
        num_prompts=20,
        # The official release guides block 11 of ViT-L with 10 prompts.
        guided_blocks=(11, ),
        num_guided_prompts=10,
        num_extra_prompts=0,
        interpolate_mode='bilinear',
        drop_rate=0.,
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/vit_large_p16.pth')),
    token_loss_weight=0.05,
    cls_loss_weight=0.05,
    metric_loss=dict(type='ProxyAnchorLoss', alpha=32., margin=0.1),
    token_pooling='region',
    # ADE20K with reduce_zero_label has no background class among its 150.
    background_classes=(),
    class_representation='region',
)
