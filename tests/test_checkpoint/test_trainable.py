"""Trainable-only checkpoints: export, safe format, and test-time loading onto the trunk."""
import copy
import glob
import os.path as osp
import re
import runpy
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmseg.registry import MODELS
from PIL import Image

from tests.helpers import ROOT, build_runner, tiny_backbone, tiny_segmentor, tiny_train_cfg
from davpt_seg.checkpoint import trainable as tc

REPO = ROOT
EXPORT = osp.join(REPO, 'tools', 'misc', 'export_trainable.py')
TEST_TOOL = osp.join(REPO, 'tools', 'test.py')


def _write_trunk(path, seed):
    torch.manual_seed(seed)
    backbone = MODELS.build(tiny_backbone(tuning_mode='linear'))
    torch.save(backbone.trunk.state_dict(), path)


def _model_cfg(trunk_path, mode='da-vpt+'):
    init_cfg = None if trunk_path is None else dict(type='Pretrained', checkpoint=trunk_path)
    return tiny_segmentor(tiny_backbone(tuning_mode=mode, init_cfg=init_cfg))


def _test_cfg(work_dir, data_root, model, load_from):
    cfg = tiny_train_cfg(work_dir, data_root, model=model)
    cfg.update(test_dataloader=copy.deepcopy(cfg['val_dataloader']),
               test_evaluator=copy.deepcopy(cfg['val_evaluator']),
               test_cfg=dict(type='TestLoop'), load_from=load_from)
    return cfg


class _Record(Hook):
    def __init__(self):
        self.outputs = []

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.outputs += [(o.seg_logits.data.clone(), o.pred_sem_seg.data.clone())
                         for o in outputs]


def _predict(cfg):
    """What tools/test.py does (Runner.from_cfg with load_from, runner.test()), recorded."""
    runner = build_runner(cfg)
    record = _Record()
    runner.register_hook(record)
    runner.test()
    return record.outputs, runner.model


@pytest.fixture(scope='module')
def trained(tmp_path_factory, synthetic_ade):
    """A DA-VPT+ model trained 2 iterations from a pretrained trunk file, then exported."""
    root = tmp_path_factory.mktemp('trainable')
    trunk = str(root / 'trunk.pth')
    _write_trunk(trunk, seed=1)
    work_dir = str(root / 'train')
    runner = build_runner(tiny_train_cfg(work_dir, synthetic_ade, max_iters=2,
                                        model=_model_cfg(trunk)))
    runner.train()
    full = osp.join(work_dir, 'iter_2.pth')
    export = str(root / 'export' / 'trainable.pth')
    summary = runpy.run_path(EXPORT)['main']([full, export])
    return dict(root=root, trunk=trunk, full=full, export=export, summary=summary,
                data_root=synthetic_ade)


def test_export_keeps_only_trained_tensors_in_a_safe_file(trained):
    checkpoint = torch.load(trained['export'], map_location='cpu', weights_only=True)
    state = checkpoint['state_dict']
    full = torch.load(trained['full'], map_location='cpu', weights_only=True)['state_dict']
    assert not [k for k in state if k.startswith('backbone.trunk.') and
                not k.endswith('kv_bias_offset')]
    for key in ('backbone.prompts.0', 'backbone.prompts.2',
                'backbone.trunk.blocks.1.attn.qkv.kv_bias_offset',
                'decode_head.conv_seg.weight', 'decode_head.up_convs.0.0.bn.running_mean',
                'auxiliary_head.0.conv_seg.bias', 'class_prompt_mapping.class_to_prompt',
                'class_prompt_mapping.class_sum'):
        assert torch.equal(state[key], full[key]), key
    assert state['backbone.' + tc.SIGNATURE_KEY].dtype == torch.float64
    meta = checkpoint['meta']
    assert meta['format'] == tc.FORMAT_TAG and meta['pretrained'] == trained['trunk']
    assert meta['dataset_meta']['classes'] and 'PromptedViT' in meta['cfg']
    summary = trained['summary']
    assert summary['dst_bytes'] < summary['src_bytes'] / 2
    assert summary['dropped_tensors'] == len(
        [k for k in full if k.startswith('backbone.trunk.') and not k.endswith('offset')])


def test_export_then_test_gives_the_same_predictions(trained):
    model = _model_cfg(trained['trunk'])
    full_out, full_model = _predict(_test_cfg(str(trained['root'] / 't_full'),
                                              trained['data_root'], model, trained['full']))
    export_out, export_model = _predict(_test_cfg(str(trained['root'] / 't_export'),
                                                  trained['data_root'], model,
                                                  trained['export']))
    assert len(full_out) == len(export_out) == 4
    for (full_logits, full_pred), (logits, pred) in zip(full_out, export_out):
        assert torch.equal(pred, full_pred)
        assert torch.equal(logits, full_logits)
    full_state, state = full_model.state_dict(), export_model.state_dict()
    assert full_state.keys() == state.keys()
    for key in full_state:
        assert torch.equal(full_state[key], state[key]), key


def test_tools_test_py_predicts_the_same_from_the_export(trained, monkeypatch):
    cfg_path = str(trained['root'] / 'tiny_test_cfg.py')
    cfg = _test_cfg(str(trained['root'] / 'tool'), trained['data_root'],
                    _model_cfg(trained['trunk']), None)
    Config(cfg).dump(cfg_path)
    outputs = {}
    for name in ('full', 'export'):
        out_dir = str(trained['root'] / f'tool_out_{name}')
        monkeypatch.setattr(sys, 'argv', ['test.py', cfg_path, trained[name], '--out',
                                          out_dir, '--work-dir',
                                          str(trained['root'] / f'tool_{name}')])
        runpy.run_path(TEST_TOOL, run_name='__main__')
        files = sorted(glob.glob(osp.join(out_dir, '*.png')))
        outputs[name] = {osp.basename(f): np.array(Image.open(f)) for f in files}
    assert len(outputs['full']) == 4 and outputs['full'].keys() == outputs['export'].keys()
    for key, pred in outputs['full'].items():
        assert np.array_equal(pred, outputs['export'][key]), key


def test_strict_load_and_safetensors_round_trip(trained, tmp_path):
    full = torch.load(trained['full'], map_location='cpu', weights_only=True)['state_dict']
    safe = str(tmp_path / 'trainable.safetensors')
    tc.export_trainable(trained['full'], safe)
    state, meta = tc.read_trainable_checkpoint(safe)
    assert meta['format'] == tc.FORMAT_TAG
    model = MODELS.build(_model_cfg(trained['trunk']))
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in model.state_dict().items():
        assert torch.equal(value, full[key]), key


def test_full_checkpoint_loads_without_the_pretrained_file(trained):
    full = torch.load(trained['full'], map_location='cpu', weights_only=True)['state_dict']
    model = MODELS.build(_model_cfg(None))
    model.load_state_dict(full, strict=True)  # the hook leaves a full state dict alone
    assert torch.equal(model.backbone.trunk.blocks[0].attn.qkv.weight,
                       full['backbone.trunk.blocks.0.attn.qkv.weight'])


def test_export_without_a_pretrained_trunk_to_restore_is_refused(trained):
    state, _ = tc.read_trainable_checkpoint(trained['export'])
    model = MODELS.build(_model_cfg(None))
    with pytest.raises(RuntimeError, match="init_cfg=dict\\(type='Pretrained'"):
        model.load_state_dict(state)


def test_a_different_pretrained_trunk_is_refused(trained, tmp_path):
    other = str(tmp_path / 'other_trunk.pth')
    _write_trunk(other, seed=2)
    state, _ = tc.read_trainable_checkpoint(trained['export'])
    model = MODELS.build(_model_cfg(other))
    with pytest.raises(RuntimeError, match='not the one this trainable-only checkpoint'):
        model.load_state_dict(state)


def test_exporting_an_export_or_a_foreign_checkpoint_is_a_clear_error(trained, tmp_path):
    with pytest.raises(KeyError, match='already trainable-only'):
        tc.export_trainable(trained['export'], str(tmp_path / 'again.pth'))
    with pytest.raises(SystemExit, match='does not exist'):
        runpy.run_path(EXPORT)['main']([str(tmp_path / 'missing.pth'),
                                        str(tmp_path / 'x.pth')])


def test_size_estimate_matches_the_measured_export(trained):
    checkpoint = torch.load(trained['export'], map_location='cpu', weights_only=True)
    model = MODELS.build(_model_cfg(trained['trunk']))
    sizes = tc.checkpoint_size_estimate(model)
    exported = sum(v.numel() * v.element_size() for k, v in checkpoint['state_dict'].items()
                   if not k.endswith(tc.SIGNATURE_KEY))
    assert sizes['export_bytes'] == exported
    assert sizes['full_bytes'] > sizes['weights_bytes'] > sizes['export_bytes']


@pytest.mark.parametrize('kind', ['full.pth', 'trainable.pth', 'trainable.safetensors'])
def test_truncated_checkpoints_and_exports_are_named_by_every_reader(trained, tmp_path,
                                                                     monkeypatch, kind):
    from mmengine.runner import CheckpointLoader

    from davpt_seg.checkpoint.files import CheckpointFileError
    source = {'full.pth': trained['full'], 'trainable.pth': trained['export']}.get(kind)
    if source is None:
        source = str(tmp_path / 'intact.safetensors')
        tc.export_trainable(trained['full'], source)
    cut = str(tmp_path / f'cut_{kind}')
    with open(source, 'rb') as intact, open(cut, 'wb') as handle:
        data = intact.read()
        handle.write(data[:len(data) // 2])  # an interrupted copy
    named = re.escape(repr(cut)) + '.*truncated'

    # mmengine's loader: load_from, --resume, tools/test.py, tools/deployment/infer.py,
    # tools/deployment/export_onnx.py
    with pytest.raises(CheckpointFileError, match=named):
        CheckpointLoader.load_checkpoint(cut, map_location='cpu')
    if kind.startswith('trainable'):
        with pytest.raises(CheckpointFileError, match=named):
            tc.read_trainable_checkpoint(cut)
    else:
        with pytest.raises(CheckpointFileError, match=named):
            tc.export_trainable(cut, str(tmp_path / 'export.pth'))

    # tools/test.py refuses it before building the model.
    cfg_path = str(tmp_path / 'cfg.py')
    Config(_test_cfg(str(tmp_path / 'work'), trained['data_root'],
                     _model_cfg(trained['trunk']), None)).dump(cfg_path)
    monkeypatch.setattr(sys, 'argv', ['test.py', cfg_path, cut, '--work-dir',
                                      str(tmp_path / 'work')])
    with pytest.raises(SystemExit, match=named):
        runpy.run_path(TEST_TOOL, run_name='__main__')
    assert not osp.exists(tmp_path / 'work')  # stopped before the runner was built
