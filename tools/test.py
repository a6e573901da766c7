# Test (and evaluate) a segmentor: mmseg 1.2.2's tools/test.py with davpt_seg imported, a
# dataset check before the model build, the metrics printed and saved as JSON
# (<work_dir>/test_metrics_{ss,ms}.json), TF32 on CUDA (--no-tf32 to turn it off), and
# CPU-only torchrun launches (gloo).
# Single-scale by default (the config's test pipeline); --tta runs mmseg's SegTTAModel over
# the config's tta_pipeline (scales 0.5-1.75 and horizontal flip): the multi-scale mIoU.
import argparse
import json
import os.path as osp
import sys

# Run from a checkout without installing: make the repository importable.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from harness.entry import quiet_third_party_warnings  # noqa: E402

quiet_third_party_warnings()

from mmengine.dist import is_main_process  # noqa: E402
from mmengine.device import is_cuda_available  # noqa: E402
from mmengine.logging import print_log  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import davpt_seg  # noqa: E402,F401  (registers modules, safe checkpoint loading)
from davpt_seg.datasets import check_data_cfg  # noqa: E402
from davpt_seg.launch import (add_common_arguments, check_checkpoint_file,  # noqa: E402
                              configure_tf32, finish_distributed, load_config,
                              parse_arguments, setup_cpu_distributed)


# TODO: support fuse_conv_bn, visualization, and format_only
def parse_args():
    parser = argparse.ArgumentParser(
        description='MMSeg test (and eval) a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir',
        help=('if specified, the evaluation metric results will be dumped'
              'into the directory as json'))
    parser.add_argument(
        '--out',
        type=str,
        help='The directory to save output prediction for offline evaluation')
    parser.add_argument(
        '--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved. '
        'If specified, it will be automatically saved '
        'to the work_dir/timestamp/show_dir')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument(
        '--tta',
        action='store_true',
        help='Test time augmentation: multi-scale (0.5-1.75) + flip')
    add_common_arguments(parser)
    return parse_arguments(parser)


def trigger_visualization_hook(cfg, args):
    default_hooks = cfg.default_hooks
    if 'visualization' in default_hooks:
        visualization_hook = default_hooks['visualization']
        # Turn on visualization
        visualization_hook['draw'] = True
        if args.show:
            visualization_hook['show'] = True
            visualization_hook['wait_time'] = args.wait_time
        if args.show_dir:
            visualizer = cfg.visualizer
            visualizer['save_dir'] = args.show_dir
    else:
        raise RuntimeError(
            'VisualizationHook must be included in default_hooks.'
            'refer to usage '
            '"visualization=dict(type=\'VisualizationHook\')"')

    return cfg


def main():
    args = parse_args()

    cfg = load_config(args)

    if not osp.isfile(args.checkpoint):
        sys.exit(f'error: checkpoint {args.checkpoint!r} does not exist')
    cfg.load_from = args.checkpoint

    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)

    if args.tta:
        if 'tta_pipeline' not in cfg or 'tta_model' not in cfg:
            sys.exit(f'error: --tta needs `tta_pipeline` and `tta_model` in {args.config}; '
                     'inherit mmseg::_base_/default_runtime.py (tta_model) and define a '
                     'tta_pipeline like mmseg::_base_/datasets/ade20k.py')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model

    # add output_dir in metric
    if args.out is not None:
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True

    for line in check_data_cfg(cfg, ('test', ), args.data_check,
                               args.data_check_samples):
        print_log(f'data check: {line}', logger='current')
    check_checkpoint_file(args.checkpoint)
    tf32 = configure_tf32(not args.no_tf32, is_cuda_available())
    if tf32:
        print_log(tf32, logger='current')

    # torchrun on a machine without GPU (tools/dist_*.sh): gloo, no SyncBN.
    setup_cpu_distributed(cfg, args.launcher)

    # build the runner from config
    runner = Runner.from_cfg(cfg)

    # start testing
    metrics = runner.test()

    scale = 'multi-scale + flip (--tta)' if args.tta else 'single-scale'
    if is_main_process():
        print_log(f'{scale}: ' + ', '.join(f'{k}: {v}' for k, v in metrics.items()),
                  logger='current')
        name = 'test_metrics_ms.json' if args.tta else 'test_metrics_ss.json'
        with open(osp.join(cfg.work_dir, name), 'w') as f:
            json.dump(dict(metrics, checkpoint=osp.abspath(args.checkpoint), tta=args.tta,
                           config=osp.abspath(args.config)), f, indent=2,
                      default=float)  # numpy scalars


if __name__ == '__main__':
    main()
    finish_distributed()
