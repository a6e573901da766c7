"""Builders of tiny versions of the real modules (few blocks, small width, 32 px), shared by
the tests: ``from tests.helpers import tiny_segmentor``."""
import copy
import functools
import itertools
import os.path as osp

from mmengine.config import ConfigDict

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY_TIMM = dict(patch_size=8, embed_dim=32, depth=4, num_heads=2)
NUM_CLASSES = 6
# The prompt layout of each preset in the tiny trunk: 3 prompts per block; block 2 guided
# by 3 prompts (M < NUM_CLASSES) plus 1 unguided.
_PROMPT_LAYOUTS = {
    'vpt-shallow': dict(num_prompts=3),
    'vpt-deep': dict(num_prompts=3),
    'da-vpt': dict(num_prompts=3, guided_blocks=(2, ), num_guided_prompts=3,
                   num_extra_prompts=1),
}
_PROMPT_LAYOUTS['da-vpt+'] = _PROMPT_LAYOUTS['da-vpt']
# mmengine names a Runner's logger, message hub and visualizer instances after its
# experiment, by default the second it started: two runners built within one second (one
# test, a fast machine) would share them, and the second's scalars would land in the first's
# work dir. Every config and runner the tests build takes its own name from this counter.
_EXPERIMENTS = itertools.count()


def fresh_experiment_name() -> str:
    return f'tiny{next(_EXPERIMENTS)}'


def build_runner(cfg):
    """``Runner.from_cfg`` on a copy of ``cfg`` (a dict or Config) under a fresh experiment
    name, so that building two runners from one config keeps their logs apart."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = copy.deepcopy(cfg if isinstance(cfg, Config) else Config(cfg))
    cfg.experiment_name = fresh_experiment_name()
    return Runner.from_cfg(cfg)


def tiny_backbone(tuning_mode: str = 'da-vpt', **overrides) -> dict:
    """A 4-block, width-32 PromptedViT config of the ``tuning_mode`` preset (``None``: the
    knobs in ``overrides`` alone, on top of 3 prompts per block)."""
    cfg = dict(type='PromptedViT', arch='vit_base_patch16_224', img_size=32,
               timm_kwargs=dict(TINY_TIMM), out_indices=(1, 2, 3), tuning_mode=tuning_mode)
    cfg.update(_PROMPT_LAYOUTS.get(tuning_mode, {} if tuning_mode else dict(num_prompts=3)))
    cfg.update(overrides)
    return cfg


# The config keys of mmseg's heads and necks that hold a width (channels, embedding sizes).
WIDTH_KEYS = ('in_channels', 'channels', 'out_channels', 'mla_channels', 'embed_dims',
              'post_process_channels')


def shrink(node, width: int, num_classes=NUM_CLASSES, key=None):
    """Widths in a head/neck config scaled so that a trunk ``width`` wide becomes the tiny
    trunk's; attention heads to the tiny trunk's (they must divide the width); class counts
    to ``num_classes`` (None: as written)."""
    if isinstance(node, dict):
        return {k: shrink(v, width, num_classes, k) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(shrink(v, width, num_classes, key) for v in node)
    if key == 'num_classes' and num_classes is not None:
        return num_classes
    if key == 'num_heads':
        return TINY_TIMM['num_heads']
    if key in WIDTH_KEYS and isinstance(node, int):
        return max(4, round(node * TINY_TIMM['embed_dim'] / width))
    return node


@functools.lru_cache(maxsize=None)
def trunk_width(arch: str) -> int:
    """The embedding width of timm's ``arch`` (built on the meta device: no weights)."""
    import timm
    import torch
    with torch.device('meta'):
        return timm.create_model(arch, pretrained=False).embed_dim


def tiny_width_model(model: dict, num_classes=NUM_CLASSES) -> dict:
    """A segmentor config over a PromptedViT with its trunk at the tiny trunk's patch size,
    width and heads (TINY_TIMM) but its own depth, so that block indices (``out_indices``,
    ``guided_blocks``) keep their meaning; the heads' and necks' widths scaled with the
    trunk's, so that a width that does not fit the trunk still does not fit; class counts
    to ``num_classes`` (None: as written); no pretrained weights (tests have none)."""
    model = copy.deepcopy(dict(model))
    backbone = dict(model.pop('backbone'))
    timm_kwargs = dict(backbone.get('timm_kwargs') or {})
    width = timm_kwargs.get('embed_dim') or trunk_width(backbone['arch'])
    model = shrink(model, width, num_classes)
    timm_kwargs.update({k: TINY_TIMM[k] for k in ('patch_size', 'embed_dim', 'num_heads')})
    backbone.update(timm_kwargs=timm_kwargs, init_cfg=None)
    model['backbone'] = backbone
    return model


def metric_losses(weight: float = 0.05, **proxy_anchor) -> dict:
    """``loss_prompt_token`` and ``loss_prompt_cls`` as the configs write them."""
    return {name: dict(type='ProxyAnchorLoss', loss_weight=weight, loss_name=name,
                       **proxy_anchor)
            for name in ('loss_prompt_token', 'loss_prompt_cls')}


def tiny_segmentor(backbone: dict = None, **overrides) -> dict:
    """A DAVPTEncoderDecoder config over ``backbone`` (default: tiny DA-VPT) with a small
    SETR-PUP head and one auxiliary head; the metric losses come with guided blocks."""
    backbone = backbone or tiny_backbone()
    norm_cfg = dict(type='BN', requires_grad=True)
    head = dict(type='SETRUPHead', in_channels=32, channels=16, num_classes=NUM_CLASSES,
                dropout_ratio=0, norm_cfg=norm_cfg, num_convs=2, up_scale=2, kernel_size=3,
                align_corners=False, loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0))
    aux = copy.deepcopy(head)
    aux.update(in_index=0, num_convs=1, up_scale=4,
               loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4))
    head.update(in_index=-1)
    cfg = dict(
        type='DAVPTEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                               seg_pad_val=255, size=(32, 32)),
        backbone=backbone, decode_head=head, auxiliary_head=[aux],
        train_cfg=ConfigDict(), test_cfg=ConfigDict(mode='whole'))
    if backbone.get('guided_blocks'):
        cfg.update(metric_losses())
    cfg.update(overrides)
    return cfg


def make_data_samples(labels):
    """SegDataSamples holding (B, H, W) label maps."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for label in labels:
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=label[None].long())
        sample.set_metainfo(dict(img_shape=tuple(label.shape), ori_shape=tuple(label.shape),
                                 pad_shape=tuple(label.shape)))
        samples.append(sample)
    return samples


def tiny_train_cfg(work_dir: str, data_root: str, max_iters: int = 2, model: dict = None,
                   batch_size: int = 2) -> dict:
    """A complete mmengine Runner config over a synthetic ADE20K-layout dataset."""
    from harness.synthetic import ade_class_names
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='RandomCrop', crop_size=(32, 32), cat_max_ratio=0.9),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackSegInputs'),
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='PackSegInputs'),
    ]
    dataset = dict(type='ADE20KDataset', data_root=data_root,
                   metainfo=dict(classes=ade_class_names(NUM_CLASSES)))
    return dict(
        default_scope='mmseg',
        work_dir=work_dir,
        experiment_name=fresh_experiment_name(),
        custom_imports=dict(imports=['davpt_seg'], allow_failed_imports=False),
        model=model or tiny_segmentor(),
        train_dataloader=dict(
            batch_size=batch_size, num_workers=0,
            sampler=dict(type='InfiniteSampler', shuffle=True),
            dataset=dict(dataset, data_prefix=dict(img_path='images/training',
                                                   seg_map_path='annotations/training'),
                         pipeline=pipeline)),
        val_dataloader=dict(
            batch_size=1, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
            dataset=dict(dataset, data_prefix=dict(img_path='images/validation',
                                                   seg_map_path='annotations/validation'),
                         pipeline=test_pipeline)),
        val_evaluator=dict(type='IoUMetric', iou_metrics=['mIoU']),
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=10**9),
        val_cfg=dict(type='ValLoop'),
        optim_wrapper=dict(type='OptimWrapper',
                           optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.)),
        default_hooks=dict(
            timer=dict(type='IterTimerHook'),
            logger=dict(type='LoggerHook', interval=1, log_metric_by_epoch=False),
            param_scheduler=dict(type='ParamSchedulerHook'),
            checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters),
            sampler_seed=dict(type='DistSamplerSeedHook')),
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo')),
        log_processor=dict(by_epoch=False),
        log_level='INFO',
        randomness=dict(seed=0),
    )
