# DA-VPT on SETR-PUP ViT-L/16, PASCAL Context with 59 classes (mmseg's
# PascalContextDataset59: background becomes ignore_index via reduce_zero_label), 480x480,
# 80k iterations. An option: the paper reports the 60-class protocol only (table 2:
# 50.15 / 51.04 for 60 classes), so there is no published target for this one.
# DA-VPT+ and VPT-Deep: setr_pup_davpt_plus_pascal_context_59.py,
# setr_pup_vpt_pascal_context_59.py.
_base_ = ['./setr_pup_davpt_pascal_context.py']
num_classes = 59
model = dict(
    decode_head=dict(num_classes=num_classes),
    auxiliary_head=[dict(head, num_classes=num_classes) for head in _base_.model.auxiliary_head],
    # Background is ignore_index here, so no class needs excluding.
    background_classes=(),
)
# LoadAnnotations reads reduce_zero_label from the dataset, so only the type changes.
train_dataloader = dict(dataset=dict(type='PascalContextDataset59'))
val_dataloader = dict(dataset=dict(type='PascalContextDataset59'))
test_dataloader = val_dataloader
