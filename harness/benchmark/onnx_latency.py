"""onnxruntime against PyTorch eager on the same exported window (docs/benchmarks.md)."""
import os.path as osp
import statistics
import time
from typing import Callable, Optional, Sequence

from .measure import cpu_model, describe_machine, loadavg, median_ratio, stamp_finish
from .report import machine_lines

ONNX_BACKENDS = ('pytorch', 'onnxruntime', 'onnxruntime-fixed')


def _model_summary(model) -> str:
    backbone = model.backbone
    trunk = getattr(backbone, 'trunk', None)
    if trunk is None:
        return type(backbone).__name__
    patch = backbone.patch_size[0]
    prompts = sorted(set(backbone.prompt_counts))
    mode = backbone.tuning_mode or 'custom'
    return (f'{type(backbone).__name__} `{mode}` ({len(trunk.blocks)} blocks, '
            f'width {backbone.embed_dim}, patch {patch}, prompts per block '
            f'{"/".join(map(str, prompts))}), {type(model.decode_head).__name__} '
            f'({model.decode_head.channels} channels, {model.decode_head.num_classes} '
            f'classes), {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters')


def run_onnx_latency(config: str, shape: Optional[Sequence[int]] = None, batch_size: int = 1,
                     repeats: int = 10, warmup: int = 2, threads: int = 1,
                     checkpoint: Optional[str] = None, cfg_options: Optional[dict] = None,
                     min_timing_seconds: float = 0.25,
                     progress: Callable[[str], None] = print) -> dict:
    """Inference latency of one window through ``config``'s model: PyTorch eager
    (``encode_decode`` under ``inference_mode``) against onnxruntime on its export, the
    dynamic-shape graph and one fixed to ``shape``.

    One process, the same thread count for both runtimes, the same input; each round times
    every backend once, rotating which goes first, and the ratios are medians of per-round
    ratios, so load changes on a shared machine hit all backends alike. Random weights
    unless ``checkpoint`` is given (time does not depend on the values).
    """
    import tempfile
    from functools import partial

    import torch

    from davpt_seg.checkpoint.trainable import build_model_from_checkpoint_cfg
    from davpt_seg.deploy import load_config, load_segmentor
    from davpt_seg.deploy.onnx_export import (INPUT_NAME, OUTPUT_NAME, InferenceGraph,
                                              export_onnx, window_size)
    from davpt_seg.deploy.onnx_runtime import create_session
    torch.set_num_threads(threads)
    cfg = load_config(config, cfg_options)
    model = load_segmentor(cfg, checkpoint)[0] if checkpoint else \
        build_model_from_checkpoint_cfg(cfg).eval()
    height, width = tuple(shape) if shape else window_size(model)
    image = torch.randn(batch_size, 3, height, width, generator=torch.Generator().manual_seed(0))
    graph = InferenceGraph(model).eval()
    with torch.inference_mode():
        reference = graph(image)
    feed = {INPUT_NAME: image.numpy()}

    def eager():
        with torch.inference_mode():
            return graph(image)
    runners, entries = dict(pytorch=eager), dict(pytorch=dict(max_abs_diff=0.))
    with tempfile.TemporaryDirectory() as folder:
        for backend, fixed in (('onnxruntime', None), ('onnxruntime-fixed', (height, width))):
            path = osp.join(folder, f'{backend}.onnx')
            progress(f'{osp.basename(config)}: exporting ({backend})')
            info = export_onnx(model, path, fixed)
            session = create_session(path, 'cpu', threads)
            runners[backend] = partial(session.run, [OUTPUT_NAME], feed)
            diff = float(abs(runners[backend]()[0] - reference.numpy()).max())
            entries[backend] = dict(export_seconds=info['seconds'], onnx_bytes=info['bytes'],
                                    max_abs_diff=diff)
    for run in runners.values():
        for _ in range(warmup):
            run()
    # A timing shorter than a scheduler slice is mostly noise on a shared machine: small
    # models run several calls per timing, the same number for every backend.
    start = time.perf_counter()
    eager()
    calls = max(1, round(min_timing_seconds / (time.perf_counter() - start)))
    times = {backend: [] for backend in runners}
    order = list(runners)
    for index in range(repeats):
        shift = index % len(order)
        for backend in order[shift:] + order[:shift]:
            start = time.perf_counter()
            for _ in range(calls):
                runners[backend]()
            times[backend].append((time.perf_counter() - start) / calls)
        progress(f'round {index + 1}/{repeats}: ' + ', '.join(
            f'{b} {1e3 * t[-1]:.1f} ms' for b, t in times.items()))
    for backend, seconds in times.items():
        entries[backend].update(
            seconds=seconds, ms=1e3 * statistics.median(seconds), ms_min=1e3 * min(seconds),
            ms_max=1e3 * max(seconds),
            ratio_vs_pytorch=median_ratio(seconds, times['pytorch']))
    return dict(config=config, checkpoint=checkpoint, shape=[height, width],
                batch_size=batch_size, calls_per_timing=calls, model=_model_summary(model),
                backends=entries)


def run_onnx_latencies(configs: Sequence[str], repeats: int = 10, warmup: int = 2,
                       threads: int = 1, batch_size: int = 1,
                       shape: Optional[Sequence[int]] = None,
                       progress: Callable[[str], None] = print) -> dict:
    """:func:`run_onnx_latency` for each config, in one run."""
    import onnx
    import onnxruntime
    results = dict(kind='onnx-latency', machine=describe_machine('cpu', threads),
                   options=dict(device='cpu', threads=threads, repeats=repeats, warmup=warmup,
                                batch_size=batch_size),
                   started=time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
                   loadavg_start=loadavg(), models=[])
    results['machine'].update(device_name=f'CPU ({cpu_model()})', onnx=onnx.__version__,
                              onnxruntime=onnxruntime.__version__)
    for config in configs:
        results['models'].append(run_onnx_latency(config, shape, batch_size, repeats, warmup,
                                                  threads, progress=progress))
    stamp_finish(results)
    return results


def render_onnx_markdown(results: dict, command: str) -> str:
    machine, options = results['machine'], results['options']
    lines = [f"### onnxruntime vs PyTorch eager, inference — {machine['device_name']}", '',
             '```', command, '```', '', *machine_lines(machine, options),
             f"- onnx {machine['onnx']}, onnxruntime {machine['onnxruntime']} "
             f"(CPUExecutionProvider, {options['threads']} intra-op thread(s), default graph "
             'optimisations)',
             f"- Run: {results['started']} → {results['finished']}; load average (1/5/15 min) "
             f"{results['loadavg_start']} at start, {results['loadavg_end']} at end; "
             f"{options['repeats']} interleaved rounds after {options['warmup']} warm-up "
             'call(s) per backend, one process', '']
    for entry in results['models']:
        height, width = entry['shape']
        lines += [f"**{entry['config']}** — {entry['model']}; one window of {height}×{width}, "
                  f"batch {entry['batch_size']}, "
                  f"{'random weights' if not entry['checkpoint'] else entry['checkpoint']}; "
                  f"{entry['calls_per_timing']} call(s) per timing", '',
                  '| backend | ms (median, min–max) | time × PyTorch eager | max abs diff vs '
                  'PyTorch |', '|---|---:|---:|---:|']
        for backend, e in entry['backends'].items():
            name = {'pytorch': 'PyTorch eager (`inference_mode`)',
                    'onnxruntime': 'onnxruntime, dynamic N/H/W graph (the default export)',
                    'onnxruntime-fixed': f'onnxruntime, graph fixed to {height}×{width} '
                                         '(`--shape`)'}[backend]
            lines.append(f"| {name} | {e['ms']:.2f} ({e['ms_min']:.2f}–{e['ms_max']:.2f}) | "
                         f"{e['ratio_vs_pytorch']:.3f} | {e['max_abs_diff']:.2g} |")
        lines.append('')
    lines += ['ms: per call. Time × PyTorch eager: median over rounds of the per-round time '
              'ratio (< 1: onnxruntime is faster). Max abs diff: logits, on this input.', '']
    return '\n'.join(lines)
