"""docs/mixing.md's recipe, applied verbatim to mmseg's own SETR ADE20K configs.

The recipe block is read from the doc, so doc and test cannot drift apart. Each converted
config is shrunk to a tiny size (widths, depth, crop, classes: test plumbing, not part of the
recipe) and trains one iteration through mmengine's Runner, hook included.
"""
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from conftest import NUM_CLASSES, TINY_TIMM

DOC = osp.join(osp.dirname(__file__), '..', 'docs', 'mixing.md')
MMSEG_SETR = {
    'pup': 'mmseg::setr/setr_vit-l_pup_8xb2-160k_ade20k-512x512.py',
    'mla': 'mmseg::setr/setr_vit-l_mla_8xb2-160k_ade20k-512x512.py',
    'naive': 'mmseg::setr/setr_vit-l_naive_8xb2-160k_ade20k-512x512.py',
}
# ViT-L widths of the SETR heads and necks -> tiny ones (1024: trunk, 256/512/128: heads).
TINY_WIDTH = {1024: TINY_TIMM["embed_dim"], 512: 32, 256: 16, 128: 8}  # MLA: 512 = 4 x 128


def recipe(base: str) -> str:
    text = open(DOC).read()
    block = re.search(r'<!-- recipe:start -->\s*```python\n(.*?)```\s*<!-- recipe:end -->',
                      text, re.S).group(1)
    lines = block.splitlines()
    assert lines[0].startswith('_base_ = ')
    return '\n'.join([f'_base_ = [{base!r}]'] + lines[1:]) + '\n'


def shrink(node, key=None):
    """Every SETR width to its tiny counterpart, every class count to NUM_CLASSES."""
    if isinstance(node, dict):
        return {k: shrink(v, k) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(shrink(v, key) for v in node)
    if key == 'num_classes':
        return NUM_CLASSES
    if key in ('in_channels', 'channels', 'out_channels', 'mla_channels'):
        return TINY_WIDTH.get(node, node)
    return node


def tiny(cfg: Config, data_root: str, work_dir: str, name: str) -> Config:
    from davpt_seg.datasets import ade_class_names
    model = shrink(cfg.to_dict()['model'])
    model['backbone'].update(arch='vit_base_patch16_224', timm_kwargs=dict(TINY_TIMM),
                             img_size=(32, 32), out_indices=(0, 1, 2, 3), num_prompts=3,
                             guided_blocks=(2, ), num_guided_prompts=3, num_extra_prompts=1,
                             init_cfg=None)
    model['data_preprocessor']['size'] = (32, 32)
    model['test_cfg'] = dict(mode='whole')
    cfg.model = model
    cfg.merge_from_dict(dict(
        work_dir=work_dir,
        visualizer=dict(name=f'mixing_{name}'),  # its own instance, not another test's
        train_dataloader=dict(
            batch_size=2, num_workers=0, persistent_workers=False,
            dataset=dict(data_root=data_root,
                         metainfo=dict(classes=ade_class_names(NUM_CLASSES)),
                         pipeline=[dict(type='LoadImageFromFile'),
                                   dict(type='LoadAnnotations', reduce_zero_label=True),
                                   dict(type='RandomCrop', crop_size=(32, 32)),
                                   dict(type='PackSegInputs')])),
        train_cfg=dict(max_iters=1, val_interval=10**9),
        default_hooks=dict(checkpoint=dict(interval=10**9), logger=dict(interval=1)),
        env_cfg=dict(cudnn_benchmark=False),
    ))
    for split in ('val', 'test'):  # training only
        cfg[f'{split}_dataloader'] = cfg[f'{split}_cfg'] = cfg[f'{split}_evaluator'] = None
    return cfg


@pytest.mark.parametrize('name', sorted(MMSEG_SETR))
def test_recipe_turns_mmseg_setr_into_davpt(name, tmp_path, synthetic_ade):
    path = tmp_path / f'setr_{name}_davpt.py'
    path.write_text(recipe(MMSEG_SETR[name]))
    cfg = Config.fromfile(str(path))
    # The recipe itself, before shrinking: DA-VPT on the original heads and schedule.
    assert cfg.model.type == 'DAVPTEncoderDecoder'
    assert cfg.model.backbone.type == 'PromptedViT'
    assert 'num_layers' not in cfg.model.backbone  # replaced, not merged
    assert cfg.custom_hooks[0].type == 'SemanticMappingHook'
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    assert cfg.train_dataloader.dataset.type == 'ADE20KDataset'
    assert ('neck' in cfg.model) == (name == 'mla')

    runner = Runner.from_cfg(tiny(cfg, synthetic_ade, str(tmp_path / 'work'), name))
    runner.train()
    assert runner.iter == 1
    model = runner.model
    assert model.class_mapping.initialized  # the hook clustered before the step
    hub = runner.message_hub
    for key in ('train/loss', 'train/decode.loss_ce', 'train/loss_prompt_token',
                'train/loss_prompt_cls'):
        assert torch.isfinite(torch.tensor(hub.get_scalar(key).current())), key
    assert hub.get_scalar('train/loss_prompt_token').current() > 0
    # Only prompts and heads trained: the trunk kept requires_grad=False.
    assert not any(p.requires_grad for p in model.backbone.trunk.parameters())
