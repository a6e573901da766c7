"""Checkpoints of davpt-seg 0.1 (the mapping under `class_mapping.`) load and test like new
ones: full checkpoints through load_from / tools/test.py, trainable-only exports, and
tools/misc/export_trainable.py on an old source."""
import copy
import os.path as osp
import runpy

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmseg.registry import MODELS

from davpt_seg.checkpoint.layout import legacy_key_renames, upgrade_legacy_keys
from tests.helpers import ROOT, build_runner, tiny_backbone, tiny_segmentor, tiny_train_cfg

EXPORT = osp.join(ROOT, 'tools', 'misc', 'export_trainable.py')


def to_old_layout(path: str, out: str) -> dict:
    """The checkpoint at ``path`` as davpt-seg 0.1 wrote it (class_mapping.* keys)."""
    checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    state = checkpoint['state_dict']
    checkpoint['state_dict'] = type(state)(
        (k.replace('class_prompt_mapping.', 'class_mapping.', 1), v) for k, v in state.items())
    torch.save(checkpoint, out)
    return checkpoint['state_dict']


class _Record(Hook):
    def __init__(self):
        self.outputs = []

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.outputs += [o.seg_logits.data.clone() for o in outputs]


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory, synthetic_ade):
    root = tmp_path_factory.mktemp('layout')
    torch.manual_seed(1)
    trunk = str(root / 'trunk.pth')
    torch.save(MODELS.build(tiny_backbone(tuning_mode='linear')).trunk.state_dict(), trunk)
    model = tiny_segmentor(tiny_backbone(init_cfg=dict(type='Pretrained', checkpoint=trunk)))
    cfg = tiny_train_cfg(str(root / 'train'), synthetic_ade, max_iters=2, model=model)
    runner = build_runner(cfg)
    runner.train()
    new = str(root / 'train' / 'iter_2.pth')
    old = str(root / 'old_layout.pth')
    old_state = to_old_layout(new, old)
    return dict(root=root, cfg=cfg, new=new, old=old, old_state=old_state,
                data_root=synthetic_ade)


def _test_outputs(cfg: dict, work_dir: str, checkpoint: str):
    cfg = copy.deepcopy(cfg)
    cfg.update(work_dir=work_dir, test_dataloader=copy.deepcopy(cfg['val_dataloader']),
               test_evaluator=copy.deepcopy(cfg['val_evaluator']),
               test_cfg=dict(type='TestLoop'), load_from=checkpoint)
    runner = build_runner(cfg)
    record = _Record()
    runner.register_hook(record)
    metrics = runner.test()
    return metrics, record.outputs, runner.model


def test_renames_are_listed_and_applied_once():
    state = {'class_mapping.centroids': 1, 'backbone.prompts.0': 2}
    assert legacy_key_renames(state) == {'class_mapping.centroids':
                                         'class_prompt_mapping.centroids'}
    assert upgrade_legacy_keys(dict(state)) == {'class_prompt_mapping.centroids': 1,
                                                'backbone.prompts.0': 2}
    with pytest.raises(KeyError, match='mixes two checkpoints'):
        upgrade_legacy_keys({'class_mapping.centroids': 1, 'class_prompt_mapping.centroids': 1})


def test_an_old_checkpoint_tests_to_the_same_miou_and_logits(checkpoints):
    assert any(k.startswith('class_mapping.') for k in checkpoints['old_state'])
    root = checkpoints['root']
    new_metrics, new_logits, _ = _test_outputs(checkpoints['cfg'], str(root / 't_new'),
                                               checkpoints['new'])
    old_metrics, old_logits, model = _test_outputs(checkpoints['cfg'], str(root / 't_old'),
                                                   checkpoints['old'])
    assert old_metrics == new_metrics
    for a, b in zip(old_logits, new_logits):
        assert torch.equal(a, b)
    for key in ('class_to_prompt', 'centroids', 'class_sum', 'class_count'):
        assert torch.equal(getattr(model.class_prompt_mapping, key).cpu(),
                           checkpoints['old_state'][f'class_mapping.{key}']), key


def test_an_old_checkpoint_loads_strictly_and_exports(checkpoints):
    model = MODELS.build(checkpoints['cfg']['model'])
    model.load_state_dict(dict(checkpoints['old_state']), strict=True)
    export = str(checkpoints['root'] / 'export.pth')
    runpy.run_path(EXPORT)['main']([checkpoints['old'], export])
    state = torch.load(export, weights_only=True)['state_dict']
    assert 'class_prompt_mapping.class_to_prompt' in state
    assert not any(k.startswith('class_mapping.') for k in state)
    fresh = MODELS.build(checkpoints['cfg']['model'])
    fresh.load_state_dict(state, strict=True)  # refills the trunk from the pretrained file


def test_an_old_checkpoints_stored_config_asks_for_today_s(checkpoints, tmp_path):
    """Its meta holds the 0.1 config (token_loss_weight, ...): the export says what to do."""
    checkpoint = torch.load(checkpoints['old'], map_location='cpu', weights_only=False)
    cfg = Config.fromstring(checkpoint['meta']['cfg'], file_format='.py')
    cfg.model.token_loss_weight = 0.05
    checkpoint['meta']['cfg'] = cfg.pretty_text
    old = str(tmp_path / 'old_meta.pth')
    torch.save(checkpoint, old)
    with pytest.raises(SystemExit, match='written by an older davpt-seg: pass the training '
                                         'config with --config'):
        runpy.run_path(EXPORT)['main']([old, str(tmp_path / 'export.pth')])
