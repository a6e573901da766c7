"""AsyncRuntimeInfoHook against mmengine's RuntimeInfoHook, both in a real tiny training."""
import json
import os.path as osp
from glob import glob

from mmengine.hooks import Hook

from tests.helpers import build_runner, tiny_train_cfg

ITERS, LOG_INTERVAL = 5, 2


class HistoryProbe(Hook):
    """After every iteration's hooks: how many loss values the message hub holds."""
    priority = 'LOWEST'

    def __init__(self):
        self.lengths = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        scalars = runner.message_hub.log_scalars
        self.lengths.append(len(scalars['train/loss'].data[0]) if 'train/loss' in scalars else 0)


def _train(tmp_path, data_root, name, runtime_info):
    cfg = tiny_train_cfg(str(tmp_path / name), data_root, max_iters=ITERS)
    cfg['default_hooks']['logger']['interval'] = LOG_INTERVAL
    cfg['default_hooks']['checkpoint']['interval'] = 3
    cfg['default_hooks']['runtime_info'] = dict(type=runtime_info)
    runner = build_runner(cfg)
    probe = HistoryProbe()
    runner.register_hook(probe)
    runner.train()
    (scalars, ) = glob(osp.join(str(tmp_path / name), '*', 'vis_data', 'scalars.json'))
    with open(scalars) as f:
        records = [json.loads(line) for line in f]
    hub = runner.message_hub.get_scalar('train/loss').data[0].tolist()
    return records, probe.lengths, hub, runner


def test_logs_and_checkpoints_hold_what_runtime_info_hook_gives(tmp_path, synthetic_ade):
    timing = ('time', 'data_time', 'memory')
    records, lengths, hub, _ = _train(tmp_path, synthetic_ade, 'sync', 'RuntimeInfoHook')
    async_records, async_lengths, async_hub, runner = _train(tmp_path, synthetic_ade, 'async',
                                                             'AsyncRuntimeInfoHook')
    assert len(records) == len(async_records) == ITERS // LOG_INTERVAL + 1
    for want, got in zip(records, async_records):
        assert {k: v for k, v in got.items() if k not in timing} == \
            {k: v for k, v in want.items() if k not in timing}
    assert async_hub == hub and len(hub) == ITERS
    # Values arrive an iteration late, except where the logger (iterations 2 and 4), the
    # checkpoint (3) or the end of training (5) reads them.
    assert lengths == [1, 2, 3, 4, 5]
    assert async_lengths == [0, 2, 3, 4, 5]
    # The checkpoint of iteration 3 holds the message hub of RuntimeInfoHook's run.
    import torch
    sync_ckpt, async_ckpt = (torch.load(osp.join(str(tmp_path / name), 'iter_3.pth'),
                                        weights_only=False, map_location='cpu')
                             for name in ('sync', 'async'))
    assert async_ckpt['message_hub']['log_scalars']['train/loss'].data[0].tolist() == \
        sync_ckpt['message_hub']['log_scalars']['train/loss'].data[0].tolist()
