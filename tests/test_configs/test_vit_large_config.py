"""Every ViT-L config under configs/: the real model builds, counts right and trains a step.

A full-size ViT-L (300M frozen parameters) runs one forward/backward on a 1x3x64x64 input;
the config-level facts (schedule, data, hook, targets) are checked without building.
"""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmseg.registry import MODELS

from tests.helpers import ROOT, make_data_samples

CONFIGS = osp.join(ROOT, 'configs')
# name -> (tuning mode, classes, background classes, iterations, crop, dataset type)
EXPECTED = {
    'setr_pup_davpt_ade20k': ('da-vpt', 150, (), 160000, 512, 'ADE20KDataset'),
    'setr_pup_davpt_plus_ade20k': ('da-vpt+', 150, (), 160000, 512, 'ADE20KDataset'),
    'setr_pup_vpt_ade20k': ('vpt-deep', 150, (), 160000, 512, 'ADE20KDataset'),
    'setr_pup_davpt_pascal_context': ('da-vpt', 60, (0, ), 80000, 480, 'PascalContextDataset'),
    'setr_pup_davpt_plus_pascal_context': ('da-vpt+', 60, (0, ), 80000, 480,
                                           'PascalContextDataset'),
    'setr_pup_vpt_pascal_context': ('vpt-deep', 60, (0, ), 80000, 480, 'PascalContextDataset'),
    'setr_pup_davpt_pascal_context_59': ('da-vpt', 59, (), 80000, 480,
                                         'PascalContextDataset59'),
    'setr_pup_davpt_plus_pascal_context_59': ('da-vpt+', 59, (), 80000, 480,
                                              'PascalContextDataset59'),
    'setr_pup_vpt_pascal_context_59': ('vpt-deep', 59, (), 80000, 480,
                                       'PascalContextDataset59'),
}
# Table 2 of the paper: every config names the result it targets.
TARGETS = {
    'setr_pup_davpt_ade20k': '45.10', 'setr_pup_davpt_plus_ade20k': '46.47',
    'setr_pup_vpt_ade20k': '44.08', 'setr_pup_davpt_pascal_context': '50.15',
    'setr_pup_davpt_plus_pascal_context': '50.40', 'setr_pup_vpt_pascal_context': '49.51',
}


@pytest.fixture
def cheap_trunk_init(monkeypatch):
    """Skips the random initialisation of ViT-L's 300M trunk weights.

    In use they come from the pretrained file; drawing 300M random numbers costs ~5 s per
    build on 2 cores, the rest of a build and step well under that. Every Linear gets a slice
    of one fixed random vector instead (finite, non-degenerate, memcpy speed).
    """
    import torch.nn as nn
    import timm.models.vision_transformer as timm_vit
    pool = torch.randn(4096 * 1024 + 4096, generator=torch.Generator().manual_seed(0)) * 0.02

    def fill(tensor, *args, **kwargs):
        with torch.no_grad():
            return tensor.view(-1).copy_(pool[:tensor.numel()]).view(tensor.shape)

    def reset_parameters(self):
        fill(self.weight)
        if self.bias is not None:
            with torch.no_grad():
                self.bias.zero_()

    monkeypatch.setattr(timm_vit, 'trunc_normal_', fill)
    monkeypatch.setattr(nn.Linear, 'reset_parameters', reset_parameters)


def _load(name: str) -> Config:
    return Config.fromfile(osp.join(CONFIGS, name + '.py'))


def test_every_vit_large_config_is_covered():
    found = {osp.splitext(osp.basename(p))[0] for p in glob.glob(osp.join(CONFIGS, '*.py'))}
    assert found - {'demo_davpt_synthetic'} == set(EXPECTED), \
        'a config under configs/ has no test here (the demo config is tested by test_tools)'


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_config_settings(name):
    mode, classes, background, iters, crop, dataset = EXPECTED[name]
    cfg = _load(name)
    text = open(osp.join(CONFIGS, name + '.py')).read()
    if name in TARGETS:
        assert TARGETS[name] in text and 'table 2' in text
    assert cfg.custom_imports.imports == ['davpt_seg']
    model = cfg.model
    assert model.type == 'DAVPTEncoderDecoder'
    assert model.backbone.arch == 'vit_large_patch16_224'
    # The configs set the knobs themselves; no preset stands between them and the reader.
    assert 'tuning_mode' not in model.backbone
    assert model.backbone.get('kv_bias_offset', False) == (mode == 'da-vpt+')
    assert tuple(model.backbone.img_size) == (crop, crop)
    assert tuple(model.data_preprocessor.size) == (crop, crop)
    assert tuple(model.test_cfg.crop_size) == (crop, crop)
    assert model.decode_head.num_classes == classes
    assert [h.num_classes for h in model.auxiliary_head] == [classes] * 3
    assert tuple(model.background_classes) == background
    assert cfg.train_cfg.max_iters == iters
    assert cfg.param_scheduler[-1].type == 'CosineAnnealingLR'
    assert cfg.param_scheduler[-1].end == iters
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    assert cfg.optim_wrapper.optimizer.lr in (1e-3, 5e-4, 1e-4, 5e-5)  # the paper's grid
    assert cfg.train_dataloader.batch_size * 8 == 16  # 8 GPUs x 2 = 16 images / iteration
    # ViT-L checkpoints are 1.3 GB: the last two are kept, the final iteration's among them.
    checkpoint = cfg.default_hooks.checkpoint
    assert checkpoint.max_keep_ckpts == 2 and iters % checkpoint.interval == 0
    assert cfg.train_dataloader.dataset.type == dataset
    assert cfg.test_dataloader.dataset.type == dataset
    assert [r for r in cfg.tta_pipeline[1].transforms[0]] == [
        dict(type='Resize', scale_factor=r, keep_ratio=True)
        for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)]
    hooks = [h.type for h in cfg.get('custom_hooks', [])]
    if mode == 'vpt-deep':
        assert hooks == [] and model.backbone.guided_blocks == ()
        assert model.loss_prompt_token is None and model.loss_prompt_cls is None
    else:
        assert hooks == ['ClassPromptMappingHook']
        for name in ('loss_prompt_token', 'loss_prompt_cls'):
            loss = model[name]
            assert (loss.type, loss.loss_weight, loss.loss_name) == \
                ('ProxyAnchorLoss', 0.05, name)
            assert (loss.alpha, loss.margin) == (32., 0.1)
        assert model.backbone.guided_blocks == (11, )
        assert model.backbone.get('num_guided_prompts', 10) == 10  # the default M


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_vit_large_config_builds_and_steps(name, cheap_trunk_init):
    mode, classes, background, *_ = EXPECTED[name]
    cfg = _load(name)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    backbone = model.backbone
    assert (backbone.depth, backbone.embed_dim) == (24, 1024)
    assert sum(p.numel() for p in backbone.trunk.parameters()) > 300e6  # a frozen ViT-L
    counts = model.trainable_parameter_counts()
    trainable = sum(counts.values())
    heads = counts['decode_head'] + counts['auxiliary_head']
    assert counts['backbone.trunk'] == 0
    if mode == 'vpt-deep':
        assert backbone.guided_blocks == () and model.class_prompt_mapping is None
        assert backbone.prompt_counts == [20] * 24
    else:
        assert backbone.guided_blocks == (11, )
        assert backbone.prompt_counts == [20] * 11 + [10] + [20] * 12
        assert model.class_prompt_mapping.num_classes == classes
    assert counts['backbone.prompts'] == sum(backbone.prompt_counts) * 1024
    # DA-VPT+ adds the k/v bias offsets: 2 x 1024 per block.
    assert counts['backbone.kv_bias_offsets'] == (24 * 2 * 1024 if mode == 'da-vpt+' else 0)
    # Table 2: 13.6M trainable (13.7M for DA-VPT+) at 150 classes; fewer classes, fewer.
    assert 13e6 <= trainable <= 14e6, trainable
    assert heads / trainable > 0.95

    model.train()
    labels = torch.randint(0, classes, (1, 64, 64))
    losses = model.loss(torch.randn(1, 3, 64, 64), make_data_samples(labels))
    total = sum(v for k, v in losses.items() if 'loss' in k)
    total.backward()
    assert torch.isfinite(total)
    assert ('loss_prompt_token' in losses) == (mode != 'vpt-deep')
    prompt_grads = [p.grad for p in backbone.prompts.values()]
    assert all(g is not None and g.abs().sum() > 0 for g in prompt_grads)
    assert all(p.grad is None for n, p in backbone.trunk.named_parameters()
               if not n.endswith('kv_bias_offset'))
    if mode == 'da-vpt+':
        offsets = [b.attn.qkv.kv_bias_offset for b in backbone.trunk.blocks]
        assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in offsets)
