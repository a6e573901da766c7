# Train a segmentor: mmseg 1.2.2's tools/train.py with davpt_seg imported (its modules
# registered, mmengine checkpoints loadable under torch's weights_only default), a check of
# the datasets before the (slow) model build, a clear error for --amp without a GPU, and
# torchrun launches (tools/dist_train.sh) that also work on CPU-only machines (gloo).
import argparse
import logging
import os.path as osp
import sys

# Run from a checkout without installing: make the repository importable.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from harness.entry import quiet_third_party_warnings  # noqa: E402

quiet_third_party_warnings()

from mmengine.logging import print_log  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from mmseg.registry import RUNNERS  # noqa: E402

import davpt_seg  # noqa: E402,F401  (registers modules, safe checkpoint loading)
from davpt_seg.datasets import check_data_cfg  # noqa: E402
from davpt_seg.launch import (add_common_arguments, check_checkpoint_file,  # noqa: E402
                              finish_distributed, has_accelerator, load_config,
                              parse_arguments, setup_cpu_distributed)


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
    add_common_arguments(parser)
    return parse_arguments(parser)


def amp_device_error():
    """Why --amp cannot run here, or None (mmengine's AmpOptimWrapper only asserts)."""
    if has_accelerator():
        return None
    return ('--amp needs a GPU (CUDA, NPU, MLU or MUSA), but none is available here: '
            'mixed precision only pays off on an accelerator. Drop --amp to train in fp32 on '
            'the CPU.')


def main():
    args = parse_args()

    cfg = load_config(args)

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
    for line in check_data_cfg(cfg, splits, args.data_check,
                               args.data_check_samples):
        print_log(f'data check: {line}', logger='current')
    check_checkpoint_file(cfg.get('load_from'), 'load_from checkpoint')

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
