"""tools/train.py and tools/test.py end to end, as a user runs them (subprocesses).

The demo config trains two iterations on the synthetic data and validates at the end; the
checkpoint is then tested single-scale (which must give the end-of-training mIoU again,
--show-dir painting every image) and with --tta (multi-scale + flip, --out writing the
predictions), and training resumes from it. tools/dist_train.sh and dist_test.sh run two
CPU processes. No run prints a Python warning (the tools hide the known third-party notices,
harness/entry.py, and nothing else). CLI errors are checked in-process: they fire before any
model is built.
"""
import glob
import importlib.util
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from tests.helpers import ROOT

DEMO = osp.join(ROOT, 'configs', 'demo_davpt_synthetic.py')


# A Python warning as the warnings module prints it: "path:line: SomeWarning: message".
WARNING_LINE = re.compile(r'^.*:\d+: \w*Warning: .*$', re.M)


def _env(**extra):
    """The tools' environment, without PYTHONWARNINGS: their console must be clean by itself
    (harness/entry.py hides the known third-party notices, and nothing else)."""
    env = dict(os.environ, OMP_NUM_THREADS='1', **extra)
    env.pop('PYTHONWARNINGS', None)
    return env


def _check(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    warned = WARNING_LINE.findall(result.stderr)
    assert not warned, f'{result.args}: warnings on the console:\n' + '\n'.join(warned)


def _run(*args):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True,
                            text=True, timeout=300)
    _check(result)
    return result.stdout + result.stderr


def _tool(name):
    spec = importlib.util.spec_from_file_location(f'davpt_tool_{name}',
                                                  osp.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data_options(root):
    return [f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'val', 'test')]


@pytest.mark.slow
def test_train_then_test_single_and_multi_scale(tmp_path, synthetic_ade):
    work = str(tmp_path / 'train')
    _run('tools/train.py', DEMO, '--work-dir', work, '--cfg-options',
         *_data_options(synthetic_ade), 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
         'train_dataloader.batch_size=2', 'param_scheduler.0.end=1',
         'param_scheduler.1.begin=1', 'param_scheduler.1.end=2',
         'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1')
    checkpoint = osp.join(work, 'iter_2.pth')
    assert osp.isfile(checkpoint)
    (scalars, ) = glob.glob(osp.join(work, '*', 'vis_data', 'scalars.json'))
    records = [json.loads(line) for line in open(scalars)]
    assert [r['iter'] for r in records if 'loss' in r] == [1, 2]
    assert all(r['loss_prompt_token'] > 0 for r in records if 'loss' in r)
    (val_record, ) = [r for r in records if 'mIoU' in r]

    ss_dir, show_dir = str(tmp_path / 'ss'), str(tmp_path / 'show')
    # --show-dir paints every `interval`-th test image (mmseg's default: 50): here all 4.
    log = _run('tools/test.py', DEMO, checkpoint, '--work-dir', ss_dir, '--show-dir',
               show_dir, '--cfg-options', *_data_options(synthetic_ade),
               'default_hooks.visualization.interval=1')
    assert 'single-scale: aAcc' in log
    ss = json.load(open(osp.join(ss_dir, 'test_metrics_ss.json')))
    # Same checkpoint, same data, same pipeline: the mIoU logged at the end of training.
    assert ss['mIoU'] == pytest.approx(val_record['mIoU'], abs=1e-6)
    assert ss['tta'] is False and ss['checkpoint'] == checkpoint
    assert len(glob.glob(osp.join(show_dir, 'vis_data', 'vis_image', '*.png'))) == 4

    ms_dir, out_dir = str(tmp_path / 'ms'), str(tmp_path / 'out')
    log = _run('tools/test.py', DEMO, checkpoint, '--tta', '--work-dir', ms_dir, '--out',
               out_dir, '--cfg-options', *_data_options(synthetic_ade))
    assert 'multi-scale + flip (--tta): aAcc' in log
    ms = json.load(open(osp.join(ms_dir, 'test_metrics_ms.json')))
    assert ms['tta'] is True and 0 <= ms['mIoU'] <= 100
    assert len(glob.glob(osp.join(out_dir, '*.png'))) == 4  # --out: one prediction per image

    # --resume continues from iter_2.pth (mapping restored: no second initial pass).
    log = _run('tools/train.py', DEMO, '--work-dir', work, '--resume', '--cfg-options',
               *_data_options(synthetic_ade), 'train_cfg.max_iters=3',
               'train_cfg.val_interval=100', 'train_dataloader.batch_size=2',
               'param_scheduler.0.end=1', 'param_scheduler.1.begin=1',
               'param_scheduler.1.end=3', 'default_hooks.checkpoint.interval=3')
    assert 'resumed' in log.lower() and 'initial pass over' not in log
    assert osp.isfile(osp.join(work, 'iter_3.pth'))


@pytest.mark.skipif(torch.cuda.is_available(), reason='the error is for GPU-less machines')
def test_amp_without_gpu_is_a_clear_error(monkeypatch, tmp_path, capsys):
    train = _tool('train')
    monkeypatch.setattr(sys, 'argv', ['train.py', DEMO, '--amp', '--work-dir', str(tmp_path)])
    with pytest.raises(SystemExit) as error:
        train.main()
    assert '--amp needs a GPU' in str(error.value) and 'Drop --amp' in str(error.value)


@pytest.mark.parametrize('config, hint', [
    ('setr_pup_davpt_ade20k.py', 'ADEChallengeData2016'),
    ('setr_pup_davpt_pascal_context.py', 'pascal_context.py'),
])
def test_tools_stop_on_a_missing_dataset(monkeypatch, tmp_path, config, hint):
    from davpt_seg.datasets import DatasetError
    missing = str(tmp_path / 'no_such_dataset')
    config = osp.join(ROOT, 'configs', config)
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'')
    for tool, args in (('train', []), ('test', [str(checkpoint)])):
        monkeypatch.setattr(sys, 'argv', [f'{tool}.py', config, *args, '--work-dir',
                                          str(tmp_path / 'work'), '--cfg-options',
                                          *_data_options(missing)])
        with pytest.raises(DatasetError) as error:
            _tool(tool).main()
        assert missing in str(error.value) and hint in str(error.value)
        assert 'docs/datasets.md' in str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU (gloo) path of the scripts')
@pytest.mark.slow
def test_dist_scripts_run_two_processes(tmp_path, synthetic_ade):
    """tools/dist_train.sh and dist_test.sh over torchrun, 2 CPU processes (gloo)."""
    env = _env(PYTHON=sys.executable, PORT=str(29500 + os.getpid() % 1000))
    work = str(tmp_path / 'train')
    result = subprocess.run(
        ['bash', 'tools/dist_train.sh', DEMO, '2', '--work-dir', work, '--cfg-options',
         *_data_options(synthetic_ade), 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
         'train_dataloader.batch_size=2', 'param_scheduler.0.end=1',
         'param_scheduler.1.begin=1', 'param_scheduler.1.end=2',
         'default_hooks.checkpoint.interval=2'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    _check(result)
    log = result.stdout + result.stderr
    assert 'CPU distributed run: gloo, 2 processes' in log
    # finish_distributed joined gloo's threads before exit (it warns about any left over).
    assert 'gloo threads' not in log
    assert osp.isfile(osp.join(work, 'iter_2.pth'))
    result = subprocess.run(
        ['bash', 'tools/dist_test.sh', DEMO, osp.join(work, 'iter_2.pth'), '2', '--work-dir',
         str(tmp_path / 'test'), '--cfg-options', *_data_options(synthetic_ade)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    _check(result)
    assert 'gloo threads' not in result.stdout + result.stderr
    metrics = json.load(open(tmp_path / 'test' / 'test_metrics_ss.json'))
    assert 0 <= metrics['mIoU'] <= 100
