# Train a segmentor: mmseg 1.2.2's tools/train.py with davpt_seg imported (its modules
# registered, mmengine checkpoints loadable under torch's weights_only default), a check of
# the datasets before the (slow) model build, a clear error for --amp without a GPU, and
# torchrun launches (tools/dist_train.sh) that also work on CPU-only machines (gloo).
import argparse
import logging
import os
import os.path as osp
import sys

from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner

from mmseg.registry import RUNNERS

# Run from a checkout without installing: make the repository importable.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import davpt_seg  # noqa: E402,F401  (registers modules, safe checkpoint loading)
from davpt_seg.datasets import check_data_cfg  # noqa: E402
from davpt_seg.launch import (finish_distributed, has_accelerator,  # noqa: E402
                              setup_cpu_distributed)


def parse_args():
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        action='store_true',
        default=False,
        help='resume from the latest checkpoint in the work_dir automatically')
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='enable automatic-mixed-precision training (needs a GPU)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override some settings in the used config, the key-value pair '
        'in xxx=yyy format will be merged into config file. If the value to '
        'be overwritten is a list, it should be like key="[a,b]" or key=a,b '
        'It also allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" '
        'Note that the quotation marks are necessary and that no white space '
        'is allowed.')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument(
        '--no-data-check',
        action='store_true',
        help='skip the check that every image has a label file of its size '
        '(dataset roots and split folders are still checked)')
    # When using PyTorch version >= 2.0.0, the `torch.distributed.launch`
    # will pass the `--local-rank` parameter to `tools/train.py` instead
    # of `--local_rank`.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)

    return args


def amp_device_error():
    """Why --amp cannot run here, or None (mmengine's AmpOptimWrapper only asserts)."""
    if has_accelerator():
        return None
    return ('--amp needs a GPU (CUDA, NPU, MLU or MUSA), but none is available here: '
            'mixed precision only pays off on an accelerator. Drop --amp to train in fp32 on '
            'the CPU.')


def main():
    args = parse_args()

    # load config
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    # work_dir is determined in this priority: CLI > segment in file > filename
    if args.work_dir is not None:
        # update configs according to CLI args if args.work_dir is not None
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        # use config filename as default work_dir if cfg.work_dir is None
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])

    # enable automatic-mixed-precision training
    if args.amp is True:
        error = amp_device_error()
        if error:
            sys.exit(f'error: {error}')
        optim_wrapper = cfg.optim_wrapper.type
        if optim_wrapper == 'AmpOptimWrapper':
            print_log(
                'AMP training is already enabled in your config.',
                logger='current',
                level=logging.WARNING)
        else:
            if optim_wrapper != 'OptimWrapper':
                sys.exit('error: --amp is only supported when the optimizer wrapper type is '
                         f'`OptimWrapper` but got {optim_wrapper}.')
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'

    # resume training
    cfg.resume = args.resume

    # Missing data should fail now, naming the path, not inside a worker after the model
    # build; validation data too, since it is first read at the end of an interval.
    splits = ('train', 'val') if cfg.get('val_cfg') else ('train', )
    for line in check_data_cfg(cfg, splits, check_samples=not args.no_data_check):
        print_log(f'data check: {line}', logger='current')

    # torchrun on a machine without GPU (tools/dist_*.sh): gloo, no SyncBN.
    setup_cpu_distributed(cfg, args.launcher)

    # build the runner from config
    if 'runner_type' not in cfg:
        # build the default runner
        runner = Runner.from_cfg(cfg)
    else:
        # build customized runner from the registry
        # if 'runner_type' is set in the cfg
        runner = RUNNERS.build(cfg)

    # start training
    runner.train()


if __name__ == '__main__':
    main()
    finish_distributed()
