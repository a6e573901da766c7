"""docs/mixing.md's recipe, applied to mmseg 1.2.2's own ViT configs, family by family.

The recipe block and the table of backbone fields are read from the doc, so doc and test
cannot drift apart: every row of the table is checked against the mmseg config it names (and
every mmseg config with a ``VisionTransformer`` backbone must have a row), and one config of
each family (SETR PUP/MLA/Naive, UperNet with ViT or DeiT with and without
``MultiLevelNeck``, Segmenter mask and linear heads, DPT) is converted with its row's values,
shrunk (widths, crop, classes, prompt counts: test plumbing, not part of the recipe; depth,
``img_size`` and ``out_indices`` stay the original's) and trained one iteration through
mmengine's Runner, hook included.
"""
import ast
import copy
import glob
import inspect
import os.path as osp
import re

import mmseg
import pytest
import timm
import torch
from mmengine.config import Config
from mmseg.models.backbones import VisionTransformer

from tests.helpers import NUM_CLASSES, ROOT, build_runner, tiny_width_model

DOC = osp.join(ROOT, 'docs', 'mixing.md')
MMSEG_CONFIGS = osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs')
VIT_FAMILIES = ('setr', 'vit', 'segmenter', 'dpt')
MMSEG_DEFAULTS = {name: p.default for name, p in
                  inspect.signature(VisionTransformer.__init__).parameters.items()}
# One config per family and variant: trained one iteration each.
TRAINED = {
    'setr-pup': 'setr/setr_vit-l_pup_8xb2-160k_ade20k-512x512.py',
    'setr-mla': 'setr/setr_vit-l_mla_8xb2-160k_ade20k-512x512.py',
    'setr-naive': 'setr/setr_vit-l_naive_8xb2-160k_ade20k-512x512.py',
    'upernet-vit-mln': 'vit/vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py',
    'upernet-vit-ln-mln': 'vit/vit_vit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py',
    'upernet-deit-no-neck': 'vit/vit_deit-b16_upernet_8xb2-160k_ade20k-512x512.py',
    'upernet-deit-s-mln': 'vit/vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512.py',
    'segmenter-mask': 'segmenter/segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py',
    'segmenter-linear': 'segmenter/segmenter_vit-s_fcn_8xb1-160k_ade20k-512x512.py',
    'dpt': 'dpt/dpt_vit-b16_8xb2-160k_ade20k-512x512.py',
}


def recipe(base: str) -> str:
    text = open(DOC).read()
    block = re.search(r'<!-- recipe:start -->\s*```python\n(.*?)```\s*<!-- recipe:end -->',
                      text, re.S).group(1)
    lines = block.splitlines()
    assert lines[0].startswith('_base_ = ')
    return '\n'.join([f'_base_ = [{base!r}]'] + lines[1:]) + '\n'


def table() -> dict:
    """config path -> {field: value} from the doc's table of backbone fields."""
    text = open(DOC).read()
    block = re.search(r'<!-- families:start -->\n(.*?)<!-- families:end -->', text,
                      re.S).group(1)
    rows = [[cell.strip().strip('`') for cell in line.strip().strip('|').split('|')]
            for line in block.strip().splitlines()]
    header, rows = rows[0], rows[2:]
    assert header[0] == 'config'
    return {row[0]: dict(zip(header[1:], (row[1], *map(ast.literal_eval, row[2:]))))
            for row in rows}


def original_backbone(config: str) -> dict:
    backbone = Config.fromfile(osp.join(MMSEG_CONFIGS, config)).model.backbone
    return {**MMSEG_DEFAULTS, **backbone.to_dict()}


def test_the_table_covers_every_mmseg_vit_config_with_its_values():
    rows = table()
    configs = []
    for family in VIT_FAMILIES:
        for path in sorted(glob.glob(osp.join(MMSEG_CONFIGS, family, '*.py'))):
            config = osp.relpath(path, MMSEG_CONFIGS)
            if original_backbone(config)['type'] == 'VisionTransformer':
                configs.append(config)
    assert sorted(rows) == sorted(configs)
    trunks = {}
    for config, row in rows.items():
        original = original_backbone(config)
        for field, value in row.items():
            if field != 'arch':
                assert value == original[field], (config, field)
        if row['arch'] not in trunks:
            with torch.device('meta'):  # the architecture only, no weights
                trunks[row['arch']] = timm.create_model(row['arch'], pretrained=False)
        trunk = trunks[row['arch']]
        assert (trunk.embed_dim, len(trunk.blocks), trunk.blocks[0].attn.num_heads,
                trunk.patch_embed.patch_size) == \
            (original['embed_dims'], original['num_layers'], original['num_heads'],
             (original['patch_size'], ) * 2), config


def converted(config: str, tmp_path, **backbone) -> Config:
    """The recipe on ``config`` with the table's fields set, as a user writes it."""
    path = tmp_path / 'davpt_config.py'
    path.write_text(recipe(f'mmseg::{config}'))
    cfg = Config.fromfile(str(path))
    cfg.model.backbone.update(table()[config], **backbone)
    return cfg


def tiny(cfg: Config, data_root: str, work_dir: str, name: str) -> Config:
    from harness.synthetic import ade_class_names
    cfg = copy.deepcopy(cfg)
    model = tiny_width_model(cfg.to_dict()['model'])
    backbone = model['backbone']
    backbone.update(num_prompts=3)
    if backbone.get('guided_blocks'):
        backbone.update(num_guided_prompts=3, num_extra_prompts=1)
    model.update(test_cfg=dict(mode='whole'))
    model['data_preprocessor']['size'] = (32, 32)
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


@pytest.mark.parametrize('name', sorted(TRAINED))
def test_recipe_turns_mmseg_vit_configs_into_davpt(name, tmp_path, synthetic_ade):
    config = TRAINED[name]
    cfg = converted(config, tmp_path)
    # The recipe itself, before shrinking: DA-VPT on the original heads and schedule.
    assert cfg.model.type == 'DAVPTEncoderDecoder'
    assert cfg.model.backbone.type == 'PromptedViT'
    assert 'num_layers' not in cfg.model.backbone  # replaced, not merged
    assert cfg.custom_hooks[0].type == 'ClassPromptMappingHook'
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    assert cfg.train_dataloader.dataset.type == 'ADE20KDataset'
    if not cfg.model.backbone.with_cls_token:  # SETR-MLA: the doc says to keep CLS
        with pytest.raises(ValueError, match='need the CLS token.*with_cls_token=True'):
            build_runner(tiny(cfg, synthetic_ade, str(tmp_path / 'x'), f'{name}-no-cls'))
        cfg.model.backbone.with_cls_token = True

    runner = build_runner(tiny(cfg, synthetic_ade, str(tmp_path / 'work'), name))
    runner.train()
    assert runner.iter == 1
    model = runner.model
    assert model.class_prompt_mapping.initialized  # the hook clustered before the step
    hub = runner.message_hub
    for key in ('train/loss', 'train/decode.loss_ce', 'train/loss_prompt_token',
                'train/loss_prompt_cls'):
        assert torch.isfinite(torch.tensor(hub.get_scalar(key).current())), key
    assert hub.get_scalar('train/loss_prompt_token').current() > 0
    # Only prompts and heads trained: the trunk kept requires_grad=False.
    assert not any(p.requires_grad for p in model.backbone.trunk.parameters())
    # What the backbone returns is what the original ViT returned to these heads.
    outs = model.backbone(torch.randn(1, 3, 32, 32))
    assert len(outs) == len(model.backbone.out_indices)
    assert all(isinstance(o, list) == cfg.model.backbone.output_cls_token for o in outs)


def test_setr_mla_without_cls_token_trains_as_vpt_deep(tmp_path, synthetic_ade):
    """mmseg's SETR-MLA drops the CLS token; the non-guided modes keep that exactly."""
    config = TRAINED['setr-mla']
    cfg = converted(config, tmp_path, guided_blocks=(), num_guided_prompts=None)
    assert cfg.model.backbone.with_cls_token is False
    # docs/mixing.md: VPT-Deep has no metric losses and no mapping hook
    cfg.model.update(loss_prompt_token=None, loss_prompt_cls=None)
    cfg.custom_hooks = []
    runner = build_runner(tiny(cfg, synthetic_ade, str(tmp_path / 'work'), 'mla-vpt'))
    runner.train()
    assert runner.iter == 1 and runner.model.backbone.num_prefix == 0
    assert torch.isfinite(torch.tensor(runner.message_hub.get_scalar('train/loss').current()))
