"""What tools/train.py and tools/test.py share: their options, the numeric precision they
run at (mixed precision, TF32) and distributed runs on machines without a GPU.

Distributed runs on machines without a GPU:

mmengine's ``pytorch`` launcher calls ``torch.cuda.set_device`` and its default DDP wrapper
pins ``device_ids`` to the local rank, so ``tools/dist_train.sh CONFIG 2`` dies on a CPU-only
machine. Here the tools start the gloo process group themselves (mmengine then uses it as
it is), wrap the model without device ids, and turn SyncBN into BN (SyncBN has no CPU
kernel; each process then normalises over its own batch). BN running statistics are then
per process (buffers are not broadcast: the ClassPromptMappingHook needs each process's own
class statistics), so the validation at the end of a multi-process run can differ slightly
from testing the saved rank-0 checkpoint. On GPUs none of this applies.
"""
import argparse
import copy
import gc
import glob
import logging
import os
import os.path as osp
import sys
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                             is_npu_available)
from mmengine.logging import print_log

from .datasets.checks import DATA_CHECK_MODES, DEFAULT_LABEL_SAMPLES
from .checkpoint.files import CheckpointFileError, check_file


def has_accelerator() -> bool:
    return any(f() for f in (is_cuda_available, is_npu_available, is_mlu_available,
                             is_musa_available))


class LaunchError(ValueError):
    """A command-line request that cannot run as asked; the message says what to change."""


# --amp-dtype's choices and the names mmengine's AmpOptimWrapper takes for them.
AMP_DTYPES = {'bf16': 'bfloat16', 'fp16': 'float16'}


def amp_device_error() -> Optional[str]:
    """Why --amp cannot run here, or None (mmengine's AmpOptimWrapper only asserts)."""
    if has_accelerator():
        return None
    return ('--amp needs a GPU (CUDA, NPU, MLU or MUSA), but none is available here: '
            'mixed precision only pays off on an accelerator. Drop --amp to train in fp32 on '
            'the CPU.')


def accelerator_supports_bf16() -> bool:
    """Whether this machine's accelerator computes in bf16 natively (CUDA: compute
    capability 8.0 and up, i.e. Ampere and newer). Older GPUs only emulate it, slowly, which
    torch's own ``is_bf16_supported()`` counts as support by default."""
    if is_cuda_available():
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3 has no emulation and no such argument
            return torch.cuda.is_bf16_supported()
    for name, available in (('npu', is_npu_available), ('mlu', is_mlu_available),
                            ('musa', is_musa_available)):
        if available():
            check = getattr(getattr(torch, name, None), 'is_bf16_supported', None)
            return bool(check is not None and check())
    return False


def configure_amp(cfg, amp_dtype: Optional[str], bf16_supported: bool
                  ) -> List[Tuple[int, str]]:
    """Turns ``cfg``'s ``OptimWrapper`` into mmengine's ``AmpOptimWrapper`` (``--amp``).

    ``amp_dtype``: ``'bf16'``, ``'fp16'`` or None, which means bf16 where the accelerator
    supports it (``bf16_supported``) and fp16 otherwise. bf16 has fp32's exponent range, so
    its gradients do not underflow and it runs without loss scaling (the wrapper's
    ``GradScaler`` is disabled: it passes the loss and the step through unchanged); fp16
    keeps mmengine's dynamic loss scaling. A config that already uses ``AmpOptimWrapper``
    is left as it is unless ``amp_dtype`` is given. Returns ``(logging level, message)``
    pairs to log; raises :class:`LaunchError` for what cannot run.
    """
    if amp_dtype is not None and amp_dtype not in AMP_DTYPES:
        raise LaunchError(f'--amp-dtype {amp_dtype!r}: choose one of {sorted(AMP_DTYPES)}')
    wrapper = cfg.optim_wrapper
    lines = []
    if wrapper.type == 'AmpOptimWrapper':
        if amp_dtype is None:
            return [(logging.WARNING, 'AMP training is already enabled in your config '
                     f'(dtype={wrapper.get("dtype")}, loss_scale='
                     f'{wrapper.get("loss_scale", "dynamic")}); left as it is')]
        lines.append((logging.WARNING, 'AMP training is already enabled in your config; '
                      f'--amp-dtype {amp_dtype} sets its dtype and loss scaling'))
    elif wrapper.type != 'OptimWrapper':
        raise LaunchError('--amp is only supported when the optimizer wrapper type is '
                          f'`OptimWrapper` but got {wrapper.type}.')
    if amp_dtype == 'bf16' and not bf16_supported:
        raise LaunchError('--amp-dtype bf16 needs an accelerator that computes in bf16 '
                          '(CUDA: compute capability 8.0 or higher, Ampere and newer), and this '
                          'one does not: use --amp-dtype fp16 (dynamic loss scaling).')
    if amp_dtype is None:
        amp_dtype = 'bf16' if bf16_supported else 'fp16'
        if not bf16_supported:
            lines.append((logging.INFO, 'AMP: this accelerator has no native bf16 (CUDA: '
                          'compute capability < 8.0), so --amp runs in fp16 with dynamic loss '
                          'scaling'))
    wrapper.type = 'AmpOptimWrapper'
    wrapper.dtype = AMP_DTYPES[amp_dtype]
    # bf16 needs no scaling; a disabled GradScaler is mmengine's way to say so.
    wrapper.loss_scale = dict(enabled=False) if amp_dtype == 'bf16' else 'dynamic'
    lines.append((logging.INFO, f'AMP: {amp_dtype} autocast, '
                  + ('no loss scaling' if amp_dtype == 'bf16' else 'dynamic loss scaling')))
    return lines


def configure_tf32(enabled: bool, cuda_available: bool) -> Optional[str]:
    """TF32 for fp32 matrix products and convolutions on CUDA (Ampere and newer).

    torch leaves TF32 off for matmuls (``torch.backends.cuda.matmul.allow_tf32``) and on for
    cuDNN convolutions, so without this a ViT-L's linear layers run at full fp32 speed,
    several times slower than TF32 on tensor cores. TF32 keeps fp32's range and 10 of its 23
    mantissa bits. ``enabled=False`` turns off both, for full fp32. Without CUDA this
    changes nothing and returns None; otherwise the line to log.
    """
    if not cuda_available:
        return None
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    if enabled:
        return ('TF32 on for fp32 matmuls and convolutions (CUDA); --no-tf32 computes them in '
                'full fp32')
    return 'TF32 off (--no-tf32): fp32 matmuls and convolutions compute in full fp32'


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


# Native threads of a live gloo process group: its tcp event loop and its work threads.
GLOO_THREAD_NAMES = ('gloo_tcp_loop', 'pt_gloo_runloop')


def native_thread_names() -> List[str]:
    """Names of this process's OS threads (Linux; empty elsewhere)."""
    names = []
    for task in sorted(glob.glob('/proc/self/task/*/comm')):
        try:
            with open(task) as handle:
                names.append(handle.read().strip())
        except OSError:  # the thread ended meanwhile
            continue
    return names


def _release_pinned_groups() -> List[str]:
    """Resets ``torch.distributed`` function defaults that hold a process group.

    ``torch.distributed.nn.functional`` (``def broadcast(..., group=group.WORLD)`` and nine
    more) and ``ZeroRedundancyOptimizer``'s ``_broadcast_object`` evaluate
    ``group.WORLD`` when their module is imported: imported after ``init_process_group``
    (mmengine imports them on building a Runner), they keep the default group alive for
    the life of the interpreter. Once the group is destroyed that reference is dead anyway;
    ``None`` means "the default group" to all of them. Returns the functions reset.
    """
    from torch.distributed import ProcessGroup
    released = []
    for name, module in list(sys.modules.items()):
        if not name.startswith('torch.distributed') or module is None:
            continue
        for attr, value in list(vars(module).items()):
            # Only callables have defaults; asking the others can warn (an attribute of the
            # deprecated `torch.distributed.reduce_op` object emits a FutureWarning).
            if not callable(value):
                continue
            defaults = getattr(value, '__defaults__', None)
            if defaults and any(isinstance(d, ProcessGroup) for d in defaults):
                value.__defaults__ = tuple(None if isinstance(d, ProcessGroup) else d
                                           for d in defaults)
                released.append(f'{name}.{attr}')
    return released


def _release_compiled_graphs() -> List[str]:
    """Drops ``torch.compile``'s graphs, which hold the process group their collectives use.

    Dynamo installs each compiled graph as a global (``__compiled_fn_*``) of the module whose
    code it traced; ``torch._dynamo.reset()`` empties its caches but leaves those globals,
    and a graph with a collective (the metric losses' gather) keeps the group through the
    example values of its nodes. Returns the globals dropped.
    """
    dynamo = sys.modules.get('torch._dynamo')
    if dynamo is None:  # nothing was compiled
        return []
    dynamo.reset()
    dropped = []
    for name, module in list(sys.modules.items()):
        namespace = getattr(module, '__dict__', None)
        if not isinstance(namespace, dict):
            continue
        for attr in [a for a in list(namespace) if a.startswith('__compiled_fn')]:
            del namespace[attr]
            dropped.append(f'{name}.{attr}')
    return dropped


def finish_distributed() -> None:
    """Destroys the process group, and gloo's threads with it, before the interpreter exits.

    ``destroy_process_group`` alone stops nothing for gloo: ``ProcessGroupGloo`` has no
    ``shutdown`` (``Backend::shutdown`` is a no-op), and the C++ group lives on while
    anything references it: the DDP wrapper and its reducer, held by the runner's reference
    cycles, and torch functions whose default arguments captured the group (see
    ``_release_pinned_groups``). Its tcp event loop and work threads then run on into
    interpreter finalisation and exit, where the group is torn down (or not) in no
    particular order relative to the peer ranks closing their sockets; a rank can then die
    with "terminate called without an active exception" (the message of a ``std::thread``
    destroyed while still joinable: gloo's ``tcp::Loop`` destructor calls
    ``std::terminate`` in that case) after a successful run, failing torchrun. So: all ranks
    meet at a barrier, the group is destroyed, its last references (those above and
    ``torch.compile``'s graphs, see ``_release_compiled_graphs``) are released and
    collected on this thread (which joins gloo's threads), and any gloo thread that still
    runs is reported. Call it once the runner is out of scope.

    Upstream: pytorch/pytorch#190489 (a gloo run that exits without tearing its group down
    dies with this message) and the abandoned pytorch/pytorch#179291 (an ``atexit``
    ``destroy_process_group``, which would not help here: the group outlives that call while
    references to it remain).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()
    released = _release_pinned_groups()
    graphs = _release_compiled_graphs()
    gc.collect()
    if released:
        print_log(f'finish_distributed: released the process group held by the default '
                  f'arguments of {released}', logger='current', level=logging.DEBUG)
    if graphs:
        print_log(f'finish_distributed: dropped the compiled graphs {graphs}',
                  logger='current', level=logging.DEBUG)
    alive = [name for name in native_thread_names() if name in GLOO_THREAD_NAMES]
    if alive:
        # stderr, not the logger: mmengine's logger only shows errors on ranks other than 0.
        print(f'finish_distributed: {len(alive)} gloo threads ({sorted(set(alive))}) are '
              'still running after the process group was destroyed: something still '
              'references it (e.g. a runner or DDP model kept alive); they will be torn down '
              'at interpreter exit, which may abort this process', file=sys.stderr, flush=True)


def check_checkpoint_file(path, what: str = 'checkpoint') -> None:
    """Exits with the reason when a local checkpoint is visibly truncated or corrupt, before
    the (slow) model build; remote ones (``scheme://``) are left to their loader."""
    if not path or '://' in str(path):
        return
    try:
        check_file(str(path), what)
    except CheckpointFileError as error:
        sys.exit(f'error: {error}')


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options tools/train.py and tools/test.py share (mmseg's, plus the data check)."""
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config as key=value pairs (mmseg syntax: lists as '
        'key="[a,b]" or key=a,b, nested as key="[(a,b),(c,d)]", no white space)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument(
        '--data-check', choices=DATA_CHECK_MODES, default=None,
        help='before building the model, check that every image has a label file of its '
        'size and that label values are classes of the decode head or its ignore index '
        '(after the dataset\'s reduce_zero_label / label_map): "sample" (default) reads the '
        'values of --data-check-samples label files per split, "full" of all of them, '
        '"off" checks the dataset folders only')
    parser.add_argument(
        '--data-check-samples', type=int, default=DEFAULT_LABEL_SAMPLES, metavar='N',
        help='label files per split, evenly spread, whose values "--data-check sample" '
        f'reads (default: {DEFAULT_LABEL_SAMPLES})')
    parser.add_argument('--no-data-check', action='store_true',
                        help='same as --data-check off')
    parser.add_argument(
        '--no-tf32', action='store_true',
        help='compute fp32 matmuls and convolutions in full fp32 on CUDA; by default they '
        'use TF32 tensor cores (Ampere and newer), several times faster')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if args.no_data_check:
        if args.data_check not in (None, 'off'):
            parser.error(f'--no-data-check contradicts --data-check {args.data_check}')
        args.data_check = 'off'
    args.data_check = args.data_check or 'sample'
    if args.data_check_samples < 1:
        parser.error('--data-check-samples must be at least 1 (use --data-check off to skip '
                     'the label values)')
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
