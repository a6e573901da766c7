"""One real training iteration through mmengine's Runner, and resume from its checkpoint."""
import json
import os.path as osp

import torch
from mmengine.config import Config
from mmengine.runner import Runner

from tests.helpers import tiny_train_cfg


def _scalars(work_dir):
    (log_dir, ) = [p for p in __import__('glob').glob(osp.join(work_dir, '*'))
                   if osp.isdir(p) and osp.isfile(osp.join(p, 'vis_data', 'scalars.json'))]
    with open(osp.join(log_dir, 'vis_data', 'scalars.json')) as f:
        return [r for r in map(json.loads, f) if 'loss' in r]  # training records only


def test_training_iteration_logs_metric_losses(tmp_path, synthetic_ade):
    work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(Config(tiny_train_cfg(work_dir, synthetic_ade, max_iters=2)))
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
    first = Runner.from_cfg(Config(tiny_train_cfg(work_dir, synthetic_ade, max_iters=2)))
    first.train()
    trained = {k: v.clone() for k, v in first.model.state_dict().items()}

    cfg = tiny_train_cfg(work_dir, synthetic_ade, max_iters=3)
    cfg.update(resume=True)
    second = Runner.from_cfg(Config(cfg))
    second.load_or_resume()
    assert second.iter == 2
    for key, value in second.model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    assert second.optim_wrapper.optimizer.state_dict()['state'], 'optimizer state restored'
    second.train()
    assert second.iter == 3
