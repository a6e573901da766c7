"""The real SETR-PUP ViT-L/16 DA-VPT config: builds, counts, and trains one tiny step."""
import os.path as osp

import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmseg.registry import MODELS

from conftest import make_data_samples

CONFIG = osp.join(osp.dirname(__file__), '..', 'configs', 'setr_pup_davpt_ade20k.py')


def test_vit_large_davpt_config_builds_and_steps():
    cfg = Config.fromfile(CONFIG)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    backbone = model.backbone
    assert (backbone.depth, backbone.embed_dim, backbone.guided_blocks) == (24, 1024, (11, ))
    assert backbone.prompt_counts == [20] * 11 + [10] + [20] * 12

    counts = model.trainable_parameter_counts()
    trainable = sum(counts.values())
    heads = counts['decode_head'] + counts['auxiliary_head']
    assert counts['backbone.prompts'] == (23 * 20 + 10) * 1024
    assert counts['backbone.trunk'] == counts['backbone.kv_bias_offsets'] == 0
    assert 13e6 <= trainable <= 14e6, trainable
    assert heads / trainable > 0.95
    assert sum(p.numel() for p in backbone.trunk.parameters()) > 300e6  # a frozen ViT-L

    model.train()
    labels = torch.randint(0, 150, (1, 64, 64))
    losses = model.loss(torch.randn(1, 3, 64, 64), make_data_samples(labels))
    total = sum(v for k, v in losses.items() if 'loss' in k)
    total.backward()
    assert torch.isfinite(total)
    assert backbone.prompts['11'].grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.trunk.parameters())
