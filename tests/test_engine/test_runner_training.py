"""One real training iteration through mmengine's Runner (also compiled), and resume from its
checkpoint."""
import json
import os.path as osp

import pytest
import torch

from tests.helpers import build_runner, tiny_train_cfg


def _scalars(work_dir):
    (log_dir, ) = [p for p in __import__('glob').glob(osp.join(work_dir, '*'))
                   if osp.isdir(p) and osp.isfile(osp.join(p, 'vis_data', 'scalars.json'))]
    with open(osp.join(log_dir, 'vis_data', 'scalars.json')) as f:
        return [r for r in map(json.loads, f) if 'loss' in r]  # training records only


def test_training_iteration_logs_metric_losses(tmp_path, synthetic_ade):
    work_dir = str(tmp_path / 'work')
    runner = build_runner(tiny_train_cfg(work_dir, synthetic_ade, max_iters=2))
    runner.train()
    records = _scalars(work_dir)
    assert len(records) == 2
    for record in records:
        assert record['loss_prompt_token'] > 0 and record['loss_prompt_cls'] > 0
        assert record['loss'] > record['decode.loss_ce']
    assert osp.isfile(osp.join(work_dir, 'iter_2.pth'))
    (log_file, ) = __import__('glob').glob(osp.join(work_dir, '*', '*.log'))
    with open(log_file) as f:
        log = f.read()
    assert 'trainable parameters: ' in log and 'backbone.prompts: ' in log


def test_resume_restores_training_state(tmp_path, synthetic_ade):
    """torch >= 2.6 loads with weights_only=True: mmengine's own checkpoints must resume."""
    work_dir = str(tmp_path / 'work')
    first = build_runner(tiny_train_cfg(work_dir, synthetic_ade, max_iters=2))
    first.train()
    trained = {k: v.clone() for k, v in first.model.state_dict().items()}

    cfg = tiny_train_cfg(work_dir, synthetic_ade, max_iters=3)
    cfg.update(resume=True)
    second = build_runner(cfg)
    second.load_or_resume()
    assert second.iter == 2
    for key, value in second.model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    assert second.optim_wrapper.optimizer.state_dict()['state'], 'optimizer state restored'
    second.train()
    assert second.iter == 3


@pytest.mark.slow
def test_training_iteration_with_compile_computes_what_eager_does(tmp_path, synthetic_ade):
    """mmengine's ``compile`` key: the model's train_step runs through torch.compile.

    The aot_eager backend traces forward and backward as inductor does (dynamo, then
    AOTAutograd) and runs the traced graphs without generating code: inductor's C++ code
    generation takes over three minutes on two CPU cores for this tiny model, and
    ``compile=True`` differs from this only in that last stage (inductor also draws its
    own random numbers, so its losses would not match eager's).
    """
    torch._dynamo.reset()
    logged = {}
    for name, compile_cfg in (('eager', None), ('compiled', dict(backend='aot_eager'))):
        work_dir = str(tmp_path / name)
        cfg = tiny_train_cfg(work_dir, synthetic_ade, max_iters=1)
        cfg.update(compile=compile_cfg, val_dataloader=None, val_cfg=None, val_evaluator=None)
        runner = build_runner(cfg)
        runner.train()
        assert hasattr(runner.model.train_step, '_torchdynamo_orig_callable') == \
            (compile_cfg is not None)
        (logged[name], ) = _scalars(work_dir)
    for key in ('loss', 'decode.loss_ce', 'loss_prompt_token', 'loss_prompt_cls'):
        assert logged['compiled'][key] == pytest.approx(logged['eager'][key], abs=1e-4), key
