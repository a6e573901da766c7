# Train a segmentor: mmseg 1.2.2's tools/train.py with davpt_seg imported (its modules
# registered, mmengine checkpoints loadable under torch's weights_only default), a check of
# the datasets before the (slow) model build, --amp in bf16 where the GPU has it (fp16
# otherwise, --amp-dtype to choose) and a clear error without a GPU, TF32 on CUDA (--no-tf32
# to turn it off), and torchrun launches (tools/dist_train.sh) that also work on CPU-only
# machines (gloo).
import argparse
import os.path as osp
import sys

# Run from a checkout without installing: make the repository importable.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from harness.entry import quiet_third_party_warnings  # noqa: E402

quiet_third_party_warnings()

from mmengine.device import is_cuda_available  # noqa: E402
from mmengine.logging import print_log  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from mmseg.registry import RUNNERS  # noqa: E402

import davpt_seg  # noqa: E402,F401  (registers modules, safe checkpoint loading)
from davpt_seg.datasets import check_data_cfg  # noqa: E402
from davpt_seg.launch import (AMP_DTYPES, LaunchError,  # noqa: E402
                              accelerator_supports_bf16, add_common_arguments,
                              amp_device_error, check_checkpoint_file, configure_amp,
                              configure_tf32, finish_distributed, load_config,
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
    parser.add_argument(
        '--amp-dtype', choices=sorted(AMP_DTYPES),
        help='the autocast dtype of --amp: bf16 (no loss scaling) or fp16 (dynamic loss '
        'scaling); default: bf16 where the GPU computes in it (CUDA: Ampere and newer), fp16 '
        'otherwise')
    add_common_arguments(parser)
    args = parse_arguments(parser)
    if args.amp_dtype and not args.amp:
        parser.error(f'--amp-dtype {args.amp_dtype} chooses the precision of --amp: add --amp')
    return args


def main():
    args = parse_args()

    cfg = load_config(args)

    if args.amp:
        error = amp_device_error()
        if error:
            sys.exit(f'error: {error}')
        try:
            for level, line in configure_amp(cfg, args.amp_dtype, accelerator_supports_bf16()):
                print_log(line, logger='current', level=level)
        except LaunchError as error:
            sys.exit(f'error: {error}')
    tf32 = configure_tf32(not args.no_tf32, is_cuda_available())
    if tf32:
        print_log(tf32, logger='current')

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
