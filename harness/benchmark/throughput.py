"""Throughput at the one-GPU recipe's batch (``benchmark.py --throughput``): counted FLOPs,
MFU against the device's own measured peak, a batch sweep, the speed-ups one by one, the
stock mmseg peer, and a real training run of the recipe.

Stages, each in worker processes of its own (``measure.VariantBench``, one per model) and
each skipped, and listed, once the time budget is spent:

1. **sweep**: the bf16 (or fp32) matrix-product rate of this device, measured here and now
   in the first worker (``measure.matmul_peak_flops``: MFU is counted model FLOP/s over
   it); then training steps of VPT-Deep and DA-VPT at each batch size, with the recipe's
   speed-ups (``FastSETRUPHead``, ``compile_regions``): step time, images/s, FLOPs of one
   step (``torch.utils.flop_counter``, forward and backward, heads and losses included),
   TFLOP/s, MFU, peak memory.
2. **inference**: images/s of ``tools/test.py``'s inference of the 8x2 ADE20K config: single
   scale (its ``slide`` windows, and ``whole``) and multi-scale + flip (``--tta``).
3. **smoke**: the recipe config trained for a few dozen iterations by mmengine's runner on
   synthetic images (data loading, hooks and logging included): the images/s a user sees,
   and where the runner's iteration goes (``runner_phases.RunnerPhaseHook``).
4. **peer**: mmseg's stock ViT with mmseg's head, fully fine-tuned (what a user of mmseg
   would otherwise train), at the same batch and precision.
5. **speed-ups**: DA-VPT at the largest batch, from the stock step (mmseg's SETR-PUP head,
   eager) through each speed-up in turn, with each step's loss on the same weights and
   batch: a speed-up that changes the loss beyond the precision's rounding is a bug.

Timing: after ``warmup`` steps (the first compile), ``repeats`` timed calls of ``iters``
steps each; medians.
"""
import os.path as osp
import re
import statistics
import time
from dataclasses import asdict, replace
from typing import Callable, List, Optional, Sequence

from .measure import (_device_name, _start_context, _Worker, answer_once, describe_machine,
                      budget_check, fmt_bytes, loadavg, stage_publisher)
from .settings import PRECISIONS, Setting
from .suite import SMOKE_CONFIG, _first_line, run_smoke

# The one-GPU recipe's training config (configs/one_gpu/): the smoke stage trains it.
RECIPE_CONFIG = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))),
                         'configs', 'one_gpu', 'setr_pup_davpt_ade20k_1xb16.py')
# The speed-ups of the recipe, cumulatively: (name, worker options).
SPEEDUPS = (
    ('stock: mmseg SETRUPHead, eager', dict(head='mmseg', compile=False)),
    ('+ FastSETRUPHead', dict(head='fast', compile=False)),
    ('+ compile_regions (the recipe)', dict(head='fast', compile=True)),
)
PEER = 'mmseg-full'
STAGES = ('sweep', 'inference', 'smoke', 'peer', 'speed-ups')


def _median_ms(seconds: Sequence[float]) -> float:
    return 1e3 * statistics.median(seconds)


def _timed_row(worker: _Worker, warmup: int, repeats: int, iters: int) -> dict:
    """The step's counted FLOPs, warm-up (whose first step's loss is the row's loss: the
    same weights and batch in every worker), peak memory over one step, the timed calls."""
    row = dict(flops=worker.ask('flops'))
    worker.ask('timed', 1)
    row['first_loss'] = worker.ask('last_loss')
    for _ in range(warmup - 1):
        worker.ask('timed', 1)
    row['peak_bytes'] = worker.ask('peak_step')
    row['loss_finite'] = worker.ask('loss_finite')
    row['step_seconds'] = [worker.ask('timed', iters) for _ in range(repeats)]
    return row


def run_throughput(setting: Setting, device: str = 'cuda', precision: str = 'bf16',
                   batch_sizes: Sequence[int] = (2, 8, 16),
                   variants: Sequence[str] = ('vpt-deep', 'da-vpt'),
                   compile_backend: str = 'inductor', repeats: int = 3, iters: int = 2,
                   warmup: int = 3, threads: int = 1, smoke_iters: int = 40,
                   smoke_config: str = RECIPE_CONFIG, smoke_cfg_options: Optional[dict] = None,
                   inference_config: str = SMOKE_CONFIG,
                   inference_images: int = 3, stages: Sequence[str] = STAGES,
                   budget_s: Optional[float] = None,
                   start_method: str = 'auto', progress: Callable[[str], None] = print,
                   on_update: Optional[Callable[[dict], None]] = None) -> dict:
    """See the module docstring. Returns plain data; ``on_update`` gets it after every
    stage, so that a run stopped from outside keeps what it measured."""
    if precision not in PRECISIONS:
        raise ValueError(f'precision {precision!r} is not one of {PRECISIONS}')
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f'batch sizes must be >= 1, got {list(batch_sizes)}')
    if repeats < 1 or iters < 1 or warmup < 1:
        raise ValueError('repeats, iters and warmup must be >= 1 (the first warm-up step '
                         'compiles)')
    unknown = [name for name in stages if name not in STAGES]
    if unknown or not stages:
        raise ValueError(f'stages {unknown or "none"}: choose some of {STAGES}')
    start = time.monotonic()
    context, method = _start_context(start_method, device)
    batch_sizes = sorted(set(batch_sizes))
    largest = batch_sizes[-1]
    base = dict(device=device, threads=threads, sdpa='auto', with_cp=False, amp=None,
                compile_backend=compile_backend)
    results = dict(
        kind='throughput', setting=asdict(setting),
        options=dict(base, precision=precision, batch_sizes=batch_sizes,
                     variants=list(variants), repeats=repeats, iters=iters, warmup=warmup,
                     smoke_iters=smoke_iters, smoke_cfg_options=dict(smoke_cfg_options or {}),
                     budget_s=budget_s, start_method=method,
                     stages=[name for name in STAGES if name in stages]),
        machine=describe_machine(device, threads), peak=None, sweep=[], speedups=[],
        peer=[], inference=[], smoke=None, skipped=[], stage_seconds={},
        started=time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
        loadavg_start=loadavg())

    update = stage_publisher(results, start, summarise_throughput, on_update)

    over_budget = budget_check(start, budget_s)

    def stage(name: str, fn: Callable[[], None]):
        if name not in stages:
            return
        if over_budget():
            results['skipped'].append(dict(stage=name, reason='time budget'))
            progress(f'{name}: skipped (time budget)')
            return
        began = time.monotonic()
        progress(f'{name} ...')
        try:
            fn()
        except (RuntimeError, OSError) as error:
            results.setdefault('errors', []).append(dict(stage=name, error=_first_line(error)))
            progress(f'{name}: failed: {_first_line(error)}')
        results['stage_seconds'][name] = time.monotonic() - began
        update()

    def worker(variant: str, batch: int, **options) -> _Worker:
        compiled = options.pop('compile', False)
        opts = dict(base, **options, compile_regions=compiled)
        # Not daemonic when compiling: the compiler may start processes of its own.
        spawned = _Worker(context, replace(setting, batch_size=batch), variant, opts,
                          daemon=not compiled)
        info = spawned.reply()
        results['machine'].setdefault('device_name', info['device_name'])
        spawned.ask('phase', 'train')
        spawned.ask('mode', dict(precision=precision, compile=compiled))
        return spawned

    def sweep():
        for variant in variants:
            live = worker(variant, batch_sizes[0], head='fast', compile=True)
            try:
                if results['peak'] is None:
                    dtype = 'bf16' if precision == 'bf16' else 'fp32'
                    results['peak'] = live.ask('matmul_peak', dict(dtype=dtype))
                    progress(f"  {dtype} matmul: "
                             f"{results['peak']['flops_per_s'] / 1e12:.1f} TFLOP/s")
                for batch in batch_sizes:
                    if over_budget():
                        results['skipped'].append(dict(stage=f'sweep {variant} b{batch}',
                                                       reason='time budget'))
                        continue
                    live.ask('batch_size', batch)
                    row = dict(variant=variant, batch_size=batch,
                               **_timed_row(live, warmup, repeats, iters))
                    results['sweep'].append(row)
                    progress(f'  {variant} b{batch}: {_median_ms(row["step_seconds"]):.1f} '
                             f'ms/step, peak {fmt_bytes(row["peak_bytes"])}')
                    update()
            finally:
                live.stop()

    def speedups():
        for name, options in SPEEDUPS:
            if over_budget():
                results['skipped'].append(dict(stage=f'speed-up {name}',
                                               reason='time budget'))
                continue
            live = worker('da-vpt', largest, **options)
            try:
                row = dict(name=name, variant='da-vpt', batch_size=largest, **options,
                           **_timed_row(live, warmup, repeats, iters))
            finally:
                live.stop()
            results['speedups'].append(row)
            progress(f'  {name}: {_median_ms(row["step_seconds"]):.1f} ms/step, first '
                     f'loss {row["first_loss"]:.6f}')
            update()

    def peer():
        live = worker(PEER, largest)
        try:
            row = dict(variant=PEER, batch_size=largest,
                       **_timed_row(live, warmup, repeats, iters))
        finally:
            live.stop()
        results['peer'].append(row)
        progress(f'  {PEER} b{largest}: {_median_ms(row["step_seconds"]):.1f} ms/step')

    def smoke():
        results['smoke'] = run_smoke(context, setting, smoke_config, smoke_iters, threads,
                                     compile_backend, smoke_cfg_options)
        smoke = results['smoke']
        if smoke.get('device_name'):
            results['machine'].setdefault('device_name', smoke['device_name'])
        progress('  ' + ('passed' if smoke.get('passed') else 'FAILED') + ': ' + (
            smoke['error'] if 'error' in smoke else
            f"{smoke['iter_ms_median']:.0f} ms/iteration at batch {smoke['batch_size']}"))

    def inference():
        for inference_precision in ['tf32'] + (['bf16'] if precision == 'bf16' else []):
            spawned = _Worker(context, setting, 'inference', dict(
                config=inference_config, device=device, threads=threads,
                precision=inference_precision, images=inference_images),
                target=_inference_worker)
            try:
                results['inference'].append(spawned.reply())
            finally:
                spawned.stop()
            row = results['inference'][-1]
            results['machine'].setdefault('device_name', row['device_name'])
            progress(f"  {inference_precision}: slide {row['slide_img_per_s']:.1f}, whole "
                     f"{row['whole_img_per_s']:.1f}, tta {row['tta_img_per_s']:.2f} img/s")

    # The sweep and inference first, then the runner's figure, then the peer and the
    # speed-ups (recorded once, rarely changed): a time budget skips the last ones.
    run = dict(sweep=sweep, inference=inference, smoke=smoke if smoke_iters else None,
               peer=peer, **{'speed-ups': speedups})
    for name in STAGES:
        if run[name] is not None:
            stage(name, run[name])
    update()
    return results


def summarise_throughput(results: dict) -> None:
    """Medians, images/s, TFLOP/s and MFU of every timed row (in place)."""
    peak = (results.get('peak') or {}).get('flops_per_s')
    for row in [*results['sweep'], *results['speedups'], *results['peer']]:
        if not row.get('step_seconds'):
            continue
        seconds = statistics.median(row['step_seconds'])
        row['step_ms'] = 1e3 * seconds
        row['img_per_s'] = row['batch_size'] / seconds
        row['tflops_per_s'] = row['flops'] / seconds / 1e12 if row.get('flops') else None
        row['mfu'] = row['flops'] / seconds / peak if row.get('flops') and peak else None
    stock = next((r for r in results['speedups'] if r.get('step_ms')), None)
    for row in results['speedups']:
        if stock and row.get('step_ms'):
            row['speedup_vs_stock'] = stock['step_ms'] / row['step_ms']
            if stock.get('first_loss') is not None and row.get('first_loss') is not None:
                row['loss_rel_diff'] = abs(row['first_loss'] - stock['first_loss']) / \
                    max(abs(stock['first_loss']), 1e-12)


# ----------------------------------------------------------------------------- inference
# An ADE20K validation image after the test pipeline's resize to a 512 short side (4:3).
INFERENCE_IMAGE = (512, 683)


def measure_inference(setting: Setting, config: str, device: str, images: int = 3,
                      warmup: int = 1, precision: str = 'tf32') -> dict:
    """Images/s of ``tools/test.py``'s inference of ``config`` (random weights) on a
    synthetic image of ADE20K's usual test size: single-scale in the config's ``slide``
    mode and in ``whole`` mode, and multi-scale + flip (``--tta``: mmseg's ``SegTTAModel``
    over the config's ``tta_pipeline``). ``precision``: ``tf32`` (what tools/test.py runs on
    a GPU) or ``bf16`` (autocast). Runs in this process (a worker's)."""
    import tempfile
    from contextlib import nullcontext

    import numpy as np
    import torch
    from mmcv.transforms import Compose
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from PIL import Image

    from davpt_seg.launch import configure_tf32

    from .suite import _shrink
    init_default_scope('mmseg')
    torch.manual_seed(0)
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    cfg.model.pop('compile_regions', None)
    height, width = INFERENCE_IMAGE
    if setting.name != 'vit-l-512':  # the test sizes: the trunk, crop and image shrink
        _shrink(cfg, setting)
        height, width = setting.img_size, setting.img_size * 4 // 3
        for step in cfg.test_pipeline:
            if step.type == 'Resize':
                step.scale = (4 * width, height)
        cfg.model.test_cfg.update(crop_size=(height, height),
                                  stride=(2 * height // 3, 2 * height // 3))
    configure_tf32(precision != 'fp32', device.startswith('cuda'))
    model = MODELS.build(cfg.model).to(device).eval()
    tta = MODELS.build(dict(cfg.tta_model, module=model)).eval()
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16) \
        if precision == 'bf16' else nullcontext()
    rng = np.random.default_rng(0)
    results = dict(image_size=[height, width], images=images, precision=precision,
                   slide=dict(crop_size=list(cfg.model.test_cfg.get('crop_size', ())),
                              stride=list(cfg.model.test_cfg.get('stride', ()))))
    with tempfile.TemporaryDirectory() as root:
        img_path, seg_path = osp.join(root, 'image.jpg'), osp.join(root, 'label.png')
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(img_path)
        Image.fromarray(rng.integers(0, 151, (height, width), dtype=np.uint8)).save(seg_path)
        sample = dict(img_path=img_path, seg_map_path=seg_path, reduce_zero_label=True,
                      seg_fields=[])
        single = pseudo_collate([Compose(cfg.test_pipeline)(dict(sample))])
        multi = pseudo_collate([Compose(cfg.tta_pipeline)(dict(sample))])

        def sync():
            if device != 'cpu':
                torch.accelerator.synchronize()

        def per_image(run) -> float:
            with torch.inference_mode(), autocast:
                for _ in range(warmup):
                    run()
                sync()
                began = time.perf_counter()
                for _ in range(images):
                    run()
                sync()
            return (time.perf_counter() - began) / images

        for mode in ('slide', 'whole'):
            model.test_cfg.mode = mode
            results[f'{mode}_seconds'] = per_image(lambda: model.test_step(single))
        model.test_cfg.mode = cfg.model.test_cfg.mode
        results['tta_seconds'] = per_image(lambda: tta.test_step(multi))
        results['tta_passes'] = len(multi['inputs'])
    for key in ('slide', 'whole', 'tta'):
        results[f'{key}_img_per_s'] = 1. / results[f'{key}_seconds']
    results['device_name'] = _device_name(torch.device(device))
    return results


def _inference_worker(conn, setting_dict: dict, _name: str, options: dict):
    def measure():
        import warnings

        import torch
        warnings.filterwarnings('ignore', category=UserWarning, module='mmseg')
        torch.set_num_threads(options.pop('threads'))
        return measure_inference(Setting(**setting_dict), **options)
    answer_once(conn, measure)


# ------------------------------------------------------------------------------- report
# The goal for the one-GPU recipe on an H200-class GPU.
TARGET_IMG_PER_S = 110.
TARGET_MFU = 0.30


def throughput_section_key(results: dict) -> str:
    """One section per setting, device and set of stages (a run of some stages adds to the
    full run's section instead of replacing it)."""
    options = results['options']
    key = f"throughput-{results['setting']['name']}-{options['device'].split(':')[0]}"
    stages = options.get('stages', STAGES)
    key = key if list(stages) == list(STAGES) else key + '-' + '-'.join(stages)
    # A training run of a changed recipe (e.g. a speed-up turned off) keeps its own section.
    changes = options.get('smoke_cfg_options')
    if changes and 'smoke' in stages:
        key += '-' + '-'.join(re.sub(r'[^a-z0-9.]+', '_', f'{name}={value}'.lower())
                              for name, value in sorted(changes.items()))
    return key


def _pct(value: Optional[float]) -> str:
    return 'n/a' if value is None else f'{100 * value:.1f} %'


def _num(value: Optional[float], fmt: str = '.1f') -> str:
    return 'n/a' if value is None else format(value, fmt)


def render_throughput_markdown(results: dict, command: str) -> str:
    from .report import machine_lines
    setting, options = results['setting'], results['options']
    machine, peak = results['machine'], results.get('peak')
    precision = options['precision']
    stages = options.get('stages', STAGES)
    timed = any(results[name] for name in ('sweep', 'speedups', 'peer'))
    lines = [
        f"### Throughput: {setting['description'].split(', batch')[0]}, {precision}, "
        + (f"batches {'/'.join(map(str, options['batch_sizes']))}"
           if list(stages) == list(STAGES) else f"stages {', '.join(stages)}")
        + f" — {machine.get('device_name') or options['device']}",
        '', '```', command, '```', '',
        *machine_lines(machine, options),
        f"- Run: {results['started']} → {results['finished']}, "
        f"{results.get('elapsed_seconds', 0):.0f} s"
        + (f" (budget {options['budget_s']:.0f} s)" if options.get('budget_s') else '')
        + (f"; per row {options['warmup']} warm-up step(s) (the first compiles), then "
           f"{options['repeats']} timed calls × {options['iters']} step(s), median"
           if timed else '')]
    if timed:
        lines += [
            '- Peak: ' + (f"{peak['dtype']} matrix product {peak['size']}², "
                          f"**{peak['flops_per_s'] / 1e12:.1f} TFLOP/s** measured on this "
                          'device in this run: the MFU denominator' if peak else
                          'not measured'),
            '- FLOPs: `torch.utils.flop_counter` over one training step (forward and '
            'backward, heads and losses), counted on the eager model with mmseg\'s SETR-PUP '
            'heads, so that every implementation of the same model has the same count']
    lines.append('')
    sweep = [r for r in results['sweep'] if r.get('step_ms')]
    if sweep:
        lines += ['Training step, the recipe\'s speed-ups (FastSETRUPHead, compile_regions), '
                  'synthetic batch, no data loading:', '',
                  '| variant | batch | step ms | img/s | TFLOP / step | TFLOP/s | MFU | '
                  'peak memory | loss finite |', '|---|---:|---:|---:|---:|---:|---:|---:|---|']
        lines += [f"| {r['variant']} | {r['batch_size']} | {r['step_ms']:.1f} | "
                  f"{r['img_per_s']:.1f} | {r['flops'] / 1e12:.2f} | "
                  f"{_num(r['tflops_per_s'])} | {_pct(r['mfu'])} | "
                  f"{fmt_bytes(r['peak_bytes'])} | {'yes' if r['loss_finite'] else 'NO'} |"
                  for r in sweep]
        lines.append('')
    rows = [r for r in results['speedups'] if r.get('step_ms')]
    if rows:
        lines += [f"The speed-ups one by one (DA-VPT, batch {rows[0]['batch_size']}, "
                  f'{precision}); loss: the first step\'s, same weights and batch:', '',
                  '| step | step ms | img/s | MFU | × stock | first-step loss | rel. diff vs '
                  'stock | peak memory |', '|---|---:|---:|---:|---:|---:|---:|---:|']
        lines += [f"| {r['name']} | {r['step_ms']:.1f} | {r['img_per_s']:.1f} | "
                  f"{_pct(r['mfu'])} | {r['speedup_vs_stock']:.2f} | {r['first_loss']:.6f} "
                  f"| {_num(r.get('loss_rel_diff'), '.1e')} | {fmt_bytes(r['peak_bytes'])} |"
                  for r in rows]
        lines.append('')
    peer = [r for r in results['peer'] if r.get('step_ms')]
    if peer:
        lines += ['The peer: mmseg\'s stock ViT and SETR-PUP head, fully fine-tuned, eager '
                  f'({precision}):', '',
                  '| variant | batch | step ms | img/s | MFU | peak memory |',
                  '|---|---:|---:|---:|---:|---:|']
        lines += [f"| {r['variant']} | {r['batch_size']} | {r['step_ms']:.1f} | "
                  f"{r['img_per_s']:.1f} | {_pct(r['mfu'])} | {fmt_bytes(r['peak_bytes'])} |"
                  for r in peer]
        lines.append('')
    if results.get('inference'):
        first = results['inference'][0]
        lines += [f"Inference (`tools/test.py` on `configs/setr_pup_davpt_ade20k.py`, random "
                  f"weights, one {first['image_size'][0]}×{first['image_size'][1]} image per "
                  f"call; slide: {first['slide']['crop_size']} windows, stride "
                  f"{first['slide']['stride']}; TTA: {first['tta_passes']} passes, 6 scales × "
                  'flip, each in slide mode):', '',
                  '| precision | single-scale slide img/s | single-scale whole img/s | '
                  'multi-scale + flip (--tta) img/s |', '|---|---:|---:|---:|']
        lines += [f"| {r['precision']} | {r['slide_img_per_s']:.1f} | "
                  f"{r['whole_img_per_s']:.1f} | {r['tta_img_per_s']:.2f} |"
                  for r in results['inference']]
        lines.append('')
    smoke = results.get('smoke')
    if smoke:
        lines.append(
            f"- Training run of `{smoke.get('config')}`" + ''.join(
                f", `{name}={value}`" for name, value in
                sorted(results['options'].get('smoke_cfg_options', {}).items())) +
            " by mmengine's runner "
            f"({smoke.get('iters')} iterations, synthetic images, data loading and hooks "
            'included): ' + (f"FAILED: {smoke['error']}" if 'error' in smoke else
                            f"{smoke['iter_ms_median']:.0f} ms per iteration of "
                            f"{smoke['batch_size']} images (median), **"
                            f"{1e3 * smoke['batch_size'] / smoke['iter_ms_median']:.1f} img/s**; "
                            f"loss {smoke['loss_first']:.3f} → {smoke['loss_last']:.3f}, finite: "
                            f"{smoke['losses_finite'] and smoke['weights_finite']}"))
        lines += _runner_phase_lines(smoke.get('runner_phases'))
    for skipped in results['skipped']:
        lines.append(f"- skipped: {skipped['stage']} ({skipped['reason']})")
    for error in results.get('errors', []):
        lines.append(f"- failed: {error['stage']}: {error['error']}")
    lines += _targets(results)
    return '\n'.join(lines) + '\n'


def _runner_phase_lines(phases: Optional[dict]) -> List[str]:
    """Where the runner's iteration went (runner_phases.RunnerPhaseHook), as a sub-list."""
    from .runner_phases import PHASE_NOTES  # imports mmengine: only where it is rendered
    if not phases:
        return []
    lines = [f"  - where an iteration went (host time, medians of the last "
             f"{phases['iterations']} iterations; period {phases['period_ms']:.1f} ms):"]
    lines += [f"    - {phase}: {ms:.1f} ms ({PHASE_NOTES[phase]})"
              for phase, ms in phases['phases_ms'].items()]
    if 'device_span_ms' in phases:
        lines.append(f"    - the device: {phases['device_span_ms']:.1f} ms from reaching the "
                     f"preprocessor's work to the optimizer's last kernel (waits inside "
                     f"included), every {phases['device_period_ms']:.1f} ms; idle between "
                     f"steps {phases['device_idle_ms']:.1f} ms per iteration")
    return lines


def _targets(results: dict) -> List[str]:
    largest = max(results['options']['batch_sizes'])
    lines = []
    for variant in results['options']['variants']:
        row = next((r for r in results['sweep'] if r['variant'] == variant and
                    r['batch_size'] == largest and r.get('step_ms')), None)
        if row is None:
            continue
        met = row['img_per_s'] >= TARGET_IMG_PER_S and (row['mfu'] or 0) >= TARGET_MFU
        lines.append(f"- {variant}, batch {largest}: {row['img_per_s']:.1f} img/s, MFU "
                     f"{_pct(row['mfu'])} (target ≥ {TARGET_IMG_PER_S:.0f} img/s and ≥ "
                     f"{100 * TARGET_MFU:.0f} % on an H200-class GPU) — "
                     f"{'**met**' if met else '**not met**'}")
        peer = next((r for r in results['peer'] if r['batch_size'] == largest and
                     r.get('step_ms')), None)
        if peer:
            lines.append(f"  - against the stock mmseg peer at batch {largest}: "
                         f"{row['img_per_s'] / peer['img_per_s']:.2f}× its images/s")
    return lines
