"""Distributed runs of tools/train.py and tools/test.py on machines without a GPU.

mmengine's ``pytorch`` launcher calls ``torch.cuda.set_device`` and its default DDP wrapper
pins ``device_ids`` to the local rank, so ``tools/dist_train.sh CONFIG 2`` dies on a CPU-only
machine. Here the tools start the gloo process group themselves (mmengine then uses it as
it is), wrap the model without device ids, and turn SyncBN into BN (SyncBN has no CPU
kernel; each process then normalises over its own batch). BN running statistics are then
per process (buffers are not broadcast: the SemanticMappingHook needs each process's own
class statistics), so the validation at the end of a multi-process run can differ slightly
from testing the saved rank-0 checkpoint. On GPUs none of this applies.
"""
import argparse
import copy
import os
import os.path as osp

import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                             is_npu_available)
from mmengine.logging import print_log


def has_accelerator() -> bool:
    return any(f() for f in (is_cuda_available, is_npu_available, is_mlu_available,
                             is_musa_available))


def _sync_bn_to_bn(node):
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for value in node.values():
            _sync_bn_to_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _sync_bn_to_bn(value)


def setup_cpu_distributed(cfg, launcher: str) -> bool:
    """Prepares ``cfg`` for a torchrun launch without accelerators; True when it did."""
    if launcher != 'pytorch' or has_accelerator():
        return False
    if not dist.is_initialized():
        dist.init_process_group('gloo')  # env:// set by torchrun
    wrapper = copy.deepcopy(cfg.get('model_wrapper_cfg') or {})
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    wrapper.update(device_ids=None, broadcast_buffers=False)
    cfg.model_wrapper_cfg = wrapper
    _sync_bn_to_bn(cfg.model)
    print_log(f'CPU distributed run: gloo, {dist.get_world_size()} processes; SyncBN -> BN',
              logger='current', level=30)
    return True


def finish_distributed() -> None:
    """Tears the process group down before the interpreter exits.

    Left to interpreter shutdown, gloo's worker threads may still run while their objects
    are destroyed, and a rank then aborts ("terminate called without an active exception")
    after a successful run, failing torchrun.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options tools/train.py and tools/test.py share (mmseg's, plus the data check)."""
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config as key=value pairs (mmseg syntax: lists as '
        'key="[a,b]" or key=a,b, nested as key="[(a,b),(c,d)]", no white space)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument(
        '--no-data-check', action='store_true',
        help='skip the check that every image has a label file of its size (dataset roots '
        'and split folders are still checked)')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_config(args: argparse.Namespace) -> Config:
    """The config with the command line applied, as mmseg's tools build it.

    work_dir: ``--work-dir``, else the config's, else ``work_dirs/<config name>``.
    """
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg
