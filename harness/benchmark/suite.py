"""The one-call GPU benchmark (``tools/analysis_tools/benchmark.py --suite``).

At the paper's scale (``--setting vit-l-512``: ViT-L/16, 512x512, batch 2, SETR-PUP heads)
it measures the training step's time and peak memory of the stock mmseg ViT fully
fine-tuned, VPT-Deep and DA-VPT, in fp32, TF32 and bf16 autocast, without and with
``with_cp``, eager and with the transformer blocks compiled; and it trains the real ADE20K
config (``configs/setr_pup_davpt_ade20k.py``, random trunk) for a few dozen bf16 iterations
on synthetic images, checking that the loss and the trained weights stay finite. The same
code runs on the CPU at the test sizes (``tiny``).

How it measures: one worker process (``measure.py``) per (variant, ``with_cp``) holds its
model; the modes (precision, compiled or eager) switch inside it, so a mode costs no model
build. Per ``with_cp`` group every mode is first warmed up in every worker (compiling where
asked), its peak memory taken over one more step; then the timed rounds: each round times
every (mode, variant) pair once, model by model with each model's modes back to back,
rotating both orders, so load changes hit all pairs alike.
Ratios are medians of per-round ratios: against VPT-Deep in the same mode, against the same
worker's fp32 eager mode, and, for compiled modes, against the same worker's eager mode at
the same precision. The smoke training runs first (correctness before speed), then the
groups. With a time budget, a stage (a group, a mode's warm-up, a round after the first)
that would start after it is skipped and listed; ``on_update`` receives the results after
every stage, so a run stopped from outside keeps what it measured.
"""
import os.path as osp
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict
from typing import Callable, List, Optional, Sequence

from .measure import (_device_name, _start_context, _Worker, answer_once, describe_machine,
                      budget_check, loadavg, median_ratio, stage_publisher)
from .settings import (PRECISIONS, REFERENCE, SDPA_BACKENDS, SUITE_VARIANTS, VARIANT_NOTES,
                       VARIANTS, Setting)

# The real training config the smoke run trains (its geometry is the vit-l-512 setting's).
SMOKE_CONFIG = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))),
                        'configs', 'setr_pup_davpt_ade20k.py')
# At least this many images, and two batches' worth: an epoch of a few iterations.
SMOKE_IMAGES = 16


def mode_name(precision: str, compile: bool) -> str:
    return precision + (' + compile' if compile else '')


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    # A worker's traceback: its last line is the exception itself.
    return lines[-1] if len(lines) > 1 else (lines[0] if lines else type(error).__name__)


def _rotated(items: list, shift: int) -> list:
    if not items:
        return items
    shift %= len(items)
    return items[shift:] + items[:shift]


# --------------------------------------------------------------------------- smoke run
def smoke_cfg(config: str, setting: Setting, data_root: str, work_dir: str, iters: int,
              compile_backend: str = 'inductor', cfg_options: Optional[dict] = None):
    """``config`` trained for ``iters`` iterations on ``data_root``: no pretrained trunk
    file (random weights), no validation, no checkpoint (1.3 GB for ViT-L). Settings other
    than ``vit-l-512`` shrink the trunk, heads, crop and data loader to theirs (the test
    sizes). A config with ``compile_regions`` compiles with ``compile_backend``.
    ``cfg_options`` change the config first, as ``tools/train.py --cfg-options`` does."""
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.model.get('compile_regions'):
        cfg.model.compile_regions = dict(backend=compile_backend)
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=0)
    cfg.model.backbone.init_cfg = None
    cfg.train_dataloader.dataset.data_root = data_root
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters + 1)
    for name in ('val_dataloader', 'val_cfg', 'val_evaluator', 'test_dataloader', 'test_cfg',
                 'test_evaluator'):
        cfg[name] = None
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger.interval = max(1, min(10, iters))
    # The mapping hook re-clusters once per epoch: an epoch of the real dataset is a thousand
    # iterations, of the smoke dataset a few, which would time k-means instead of training.
    # The initial clustering pass before training stays.
    for hook in cfg.get('custom_hooks', []):
        if hook.get('type') == 'ClassPromptMappingHook':
            hook['interval'] = iters + 1
    if setting.name != 'vit-l-512':
        _shrink(cfg, setting)
    return cfg


def _shrink(cfg, setting: Setting):
    size = (setting.img_size, setting.img_size)
    # The SETR-PUP heads read four maps (decode head: the last; auxiliary heads: the rest).
    out_indices = tuple(setting.out_indices) if len(setting.out_indices) == 4 else \
        tuple(range(setting.depth - 4, setting.depth))
    cfg.model.backbone.update(arch=setting.arch, timm_kwargs=dict(setting.timm_kwargs),
                              img_size=size, out_indices=out_indices,
                              guided_blocks=tuple(setting.guided_blocks))
    cfg.model.data_preprocessor.size = size
    for head in [cfg.model.decode_head, *cfg.model.auxiliary_head]:
        head.update(in_channels=setting.embed_dim, channels=setting.head_channels)
    cfg.train_dataloader.num_workers = min(cfg.train_dataloader.num_workers, 2)
    for step in cfg.train_dataloader.dataset.pipeline:
        if step.type == 'RandomResize':
            step.scale = (4 * setting.img_size, setting.img_size)
        elif step.type == 'RandomCrop':
            step.crop_size = size


def smoke_train(setting: Setting, config: str = SMOKE_CONFIG, iters: int = 50,
                threads: int = 1, compile_backend: str = 'inductor',
                cfg_options: Optional[dict] = None) -> dict:
    """Trains ``config`` (see :func:`smoke_cfg`) as ``tools/train.py --amp`` would (bf16
    where the GPU has it, TF32; fp32 on the CPU, where mmengine's AmpOptimWrapper cannot
    run) on a synthetic ADE20K-layout dataset, and reports whether every iteration's losses
    and the trained weights are finite."""
    import torch
    from mmengine.device import is_cuda_available
    from mmengine.runner import Runner

    from davpt_seg.launch import (accelerator_supports_bf16, configure_amp, configure_tf32,
                                  has_accelerator)

    from ..synthetic import MAX_CLASSES, make_ade_like_dataset
    from .runner_phases import PeakMemoryHook, RunnerPhaseHook
    torch.set_num_threads(threads)
    root = tempfile.mkdtemp(prefix='davpt-smoke-')
    try:
        # ADE20K's images are about the crop's size; the pipeline resizes them 0.5-2x.
        image_size = setting.img_size
        cfg = smoke_cfg(config, setting, '', osp.join(root, 'work'), iters, compile_backend,
                        cfg_options)
        images = max(SMOKE_IMAGES, 2 * cfg.train_dataloader.batch_size)
        cfg.train_dataloader.dataset.data_root = make_ade_like_dataset(
            osp.join(root, 'data'), num_train=images, size=image_size,
            num_classes=MAX_CLASSES, splits=('training', ))
        if has_accelerator():
            notes = [line for _, line in configure_amp(cfg, None, accelerator_supports_bf16())]
            precision = 'bf16' if cfg.optim_wrapper.dtype == 'bfloat16' else 'fp16'
        else:
            notes = ['fp32: mixed precision (mmengine\'s AmpOptimWrapper) needs an accelerator']
            precision = 'fp32'
            if cfg.optim_wrapper.type == 'AmpOptimWrapper':  # a GPU recipe, on the CPU
                cfg.optim_wrapper = dict(type='OptimWrapper',
                                         optimizer=cfg.optim_wrapper.optimizer)
        tf32 = configure_tf32(True, is_cuda_available())
        notes += [tf32] if tf32 else []
        runner = Runner.from_cfg(cfg)
        phases, peak = RunnerPhaseHook(), PeakMemoryHook()
        runner.register_hook(phases)
        runner.register_hook(peak)
        if is_cuda_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        runner.train()
        seconds = time.perf_counter() - start
        scalars = runner.message_hub.log_scalars
        losses = {key[len('train/'):]: [float(v) for v in buffer.data[0]]
                  for key, buffer in scalars.items()
                  if key.startswith('train/') and 'loss' in key}
        iter_times = [float(v) for v in scalars['train/time'].data[0]]
        trained = [p for p in runner.model.parameters() if p.requires_grad]
        weights_finite = all(bool(torch.isfinite(p).all()) for p in trained)
        total = losses['loss']
        losses_finite = all(v == v and abs(v) != float('inf') for vs in losses.values()
                            for v in vs)
        return dict(
            config=osp.relpath(config, osp.dirname(osp.dirname(SMOKE_CONFIG))), iters=iters,
            iterations_logged=len(total), precision=precision, notes=notes,
            images=images, image_size=image_size,
            batch_size=cfg.train_dataloader.batch_size, loss_first=total[0],
            loss_last=total[-1], loss_max=max(total), loss_names=sorted(losses),
            losses_finite=losses_finite, weights_finite=weights_finite,
            passed=losses_finite and weights_finite and len(total) == iters,
            # The second half: the first iterations compile.
            seconds=seconds, iter_ms_median=1e3 * statistics.median(
                iter_times[len(iter_times) // 2:]),
            peak_bytes=peak.peak_bytes if is_cuda_available() else None,
            device=str(runner.model.data_preprocessor.device),
            runner_phases=phases.summary(skip=iters // 2),
            device_name=_device_name(runner.model.data_preprocessor.device))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _smoke_worker(conn, setting_dict: dict, _name: str, options: dict):
    def train():
        import warnings
        warnings.filterwarnings('ignore', category=UserWarning, module='mmseg')
        return smoke_train(Setting(**setting_dict), **options)
    answer_once(conn, train)


def run_smoke(context, setting: Setting, config: str, iters: int, threads: int,
              compile_backend: str = 'inductor', cfg_options: Optional[dict] = None) -> dict:
    """:func:`smoke_train` in a fresh process (its own GPU memory and logger)."""
    worker = _Worker(context, setting, 'smoke training', dict(
        config=config, iters=iters, threads=threads, compile_backend=compile_backend,
        cfg_options=cfg_options),
                     target=_smoke_worker, daemon=False)  # its data loader forks workers
    try:
        return worker.reply()
    except (RuntimeError, OSError) as error:
        return dict(config=config, iters=iters, passed=False, error=_first_line(error))
    finally:
        worker.stop()


# -------------------------------------------------------------------------------- suite
def run_suite(setting: Setting, variants: Sequence[str] = SUITE_VARIANTS,
              precisions: Sequence[str] = PRECISIONS,
              compile_precisions: Sequence[str] = ('bf16', ),
              cp_modes: Sequence[bool] = (False, True), repeats: int = 5, iters: int = 2,
              warmup: int = 2, device: str = 'cuda', threads: int = 1, sdpa: str = 'auto',
              compile_backend: str = 'inductor', smoke_iters: int = 50,
              smoke_config: str = SMOKE_CONFIG, budget_s: Optional[float] = None,
              start_method: str = 'auto', progress: Callable[[str], None] = print,
              on_update: Optional[Callable[[dict], None]] = None) -> dict:
    """See the module docstring. Returns plain data (``rows``: one per variant, with_cp and
    mode; ``smoke``; ``skipped``)."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f'unknown variants {unknown}: choose from {VARIANTS}')
    if REFERENCE not in variants:
        raise ValueError(f'the variants must include {REFERENCE!r}: ratios are against it')
    bad = [p for p in [*precisions, *compile_precisions] if p not in PRECISIONS]
    if bad or not precisions:
        raise ValueError(f'precisions must be some of {PRECISIONS}, got {bad or "none"}')
    if 'fp32' not in precisions:
        raise ValueError("the precisions must include 'fp32': ratios are against it")
    if repeats < 1 or iters < 1 or warmup < 1:
        raise ValueError('repeats, iters and warmup must be >= 1 (a compiled mode compiles '
                         'in its first warm-up step)')
    if sdpa not in SDPA_BACKENDS:
        raise ValueError(f'sdpa={sdpa!r} is not one of {SDPA_BACKENDS}')
    variants = list(dict.fromkeys(variants))
    modes = [dict(precision=p, compile=False) for p in dict.fromkeys(precisions)] + \
        [dict(precision=p, compile=True) for p in dict.fromkeys(compile_precisions)]
    start = time.monotonic()

    over_budget = budget_check(start, budget_s)

    context, method = _start_context(start_method, device)
    options = dict(device=device, threads=threads, sdpa=sdpa, compile_backend=compile_backend)
    results = dict(
        kind='suite', setting=asdict(setting),
        options=dict(options, variants=variants, precisions=list(precisions),
                     compile_precisions=list(compile_precisions),
                     cp_modes=list(cp_modes), repeats=repeats, iters=iters, warmup=warmup,
                     smoke_iters=smoke_iters, budget_s=budget_s, start_method=method),
        machine=describe_machine(device, threads), rows=[], skipped=[], smoke=None,
        stage_seconds={}, started=time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
        loadavg_start=loadavg())

    update = stage_publisher(results, start, summarise_suite, on_update)

    if smoke_iters:
        progress(f'smoke training: {osp.basename(smoke_config)}, {smoke_iters} iterations')
        stage = time.monotonic()
        results['smoke'] = run_smoke(context, setting, smoke_config, smoke_iters, threads)
        results['stage_seconds']['smoke'] = time.monotonic() - stage
        smoke = results['smoke']
        progress(f'  {"passed" if smoke.get("passed") else "FAILED"}: '
                 + (smoke['error'] if 'error' in smoke else
                    f'loss {smoke["loss_first"]:.3f} -> {smoke["loss_last"]:.3f}'))
        update()
    for with_cp in cp_modes:
        group = f'with_cp {"on" if with_cp else "off"}'
        if over_budget():
            results['skipped'].append(dict(stage=group, reason='time budget'))
            continue
        stage = time.monotonic()
        _run_group(context, setting, variants, modes, dict(options, with_cp=with_cp),
                   repeats, iters, warmup, over_budget, progress, results, update)
        results['stage_seconds'][group] = time.monotonic() - stage
        update()
    update()
    return results


def _run_group(context, setting: Setting, variants: List[str], modes: List[dict],
               options: dict, repeats: int, iters: int, warmup: int,
               over_budget: Callable[[], bool], progress: Callable[[str], None],
               results: dict, update: Callable[[], None]):
    with_cp = options['with_cp']
    cp_text = f'with_cp {"on" if with_cp else "off"}'
    worker_options = dict(options, amp=None, compile=any(m['compile'] for m in modes))
    progress(f'{cp_text}: building {len(variants)} workers for {setting.description}')
    # Not daemonic when compiling: the compiler may start processes of its own.
    workers = {v: _Worker(context, setting, v, worker_options,
                          daemon=not worker_options['compile']) for v in variants}
    rows, infos = {}, {}

    def new_row(variant, mode):
        row = dict(variant=variant, with_cp=with_cp, precision=mode['precision'],
                   compile=mode['compile'], note=VARIANT_NOTES[variant])
        rows[(variant, mode_name(**mode))] = row
        results['rows'].append(row)  # now, so that every update shows it
        return row

    try:
        for variant, worker in workers.items():
            try:
                infos[variant] = worker.reply()
                worker.ask('phase', 'train')
            except (RuntimeError, OSError) as error:
                for mode in modes:
                    new_row(variant, mode)['error'] = _first_line(error)
        results['machine']['device_name'] = results['machine'].get('device_name') or next(
            (info['device_name'] for info in infos.values()), None)
        active = []  # (mode, variants that warmed up in it)
        for mode in modes:
            name = mode_name(**mode)
            if over_budget():
                results['skipped'].append(dict(stage=f'{cp_text}, {name}',
                                               reason='time budget'))
                continue
            stage, ready = time.monotonic(), []
            for variant in infos:
                row = new_row(variant, mode)
                row['trainable'] = infos[variant]['trainable']
                try:
                    workers[variant].ask('mode', mode)
                    first = time.monotonic()
                    for _ in range(warmup):
                        workers[variant].ask('timed', 1)
                    row['warmup_seconds'] = time.monotonic() - first
                    row['peak_bytes'] = workers[variant].ask('peak_step')
                    row['loss_finite'] = workers[variant].ask('loss_finite')
                    row['compiled_graphs'] = workers[variant].ask('compiled_graphs')
                    row['step_seconds'] = []
                    ready.append(variant)
                except (RuntimeError, OSError) as error:
                    row['error'] = _first_line(error)
                    progress(f'  {variant}, {name}: failed: {row["error"]}')
            if mode['compile']:
                results['stage_seconds'][f'{cp_text}: {name} warm-up'] = \
                    time.monotonic() - stage
            progress(f'  {name}: warmed up in {time.monotonic() - stage:.1f} s')
            active.append((mode, ready))
            update()
        for round_index in range(repeats):
            if round_index and over_budget():
                results['skipped'].append(dict(
                    stage=f'{cp_text}: rounds {round_index + 1}-{repeats}',
                    reason='time budget'))
                break
            # Model by model, each in all its modes back to back: the modes' ratios (what
            # the suite is about) compare steps seconds apart, even on a loaded machine.
            for variant in _rotated(list(infos), round_index):
                for mode, ready in _rotated(active, round_index):
                    if variant not in ready:
                        continue
                    row = rows[(variant, mode_name(**mode))]
                    try:
                        workers[variant].ask('mode', mode)
                        row['step_seconds'].append(workers[variant].ask('timed', iters))
                    except (RuntimeError, OSError) as error:
                        row['error'] = _first_line(error)
                        ready.remove(variant)
            progress(f'  round {round_index + 1}/{repeats}: ' + ', '.join(
                f'{v} {name} {1e3 * rows[(v, name)]["step_seconds"][-1]:.0f} ms'
                for m, ready in active for name in [mode_name(**m)] for v in ready))
            update()
    finally:
        for worker in workers.values():
            worker.stop()


def summarise_suite(results: dict):
    """Medians, throughput and the per-round ratios of every timed row (in place)."""
    batch = results['setting']['batch_size']
    rows = [r for r in results['rows'] if r.get('step_seconds')]
    index = {(r['variant'], r['with_cp'], r['precision'], r['compile']): r for r in rows}
    for row in rows:
        seconds = row['step_seconds']
        median = statistics.median(seconds)
        row.update(step_ms=1e3 * median, step_ms_min=1e3 * min(seconds),
                   step_ms_max=1e3 * max(seconds), img_per_s=batch / median)
        key = (row['variant'], row['with_cp'], row['precision'], row['compile'])
        for name, other in (
                ('ratio_vs_vpt_deep', (REFERENCE, *key[1:])),
                ('ratio_vs_fp32_eager', (key[0], key[1], 'fp32', False)),
                ('ratio_vs_eager', (*key[:3], False) if row['compile'] else None)):
            reference = index.get(other) if other else None
            row[name] = median_ratio(seconds, reference['step_seconds']) \
                if reference else None
