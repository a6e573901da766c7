"""Where one training step's time goes (``tools/analysis_tools/benchmark.py --profile``).

``torch.profiler`` records a few training steps of one variant (the benchmark's model, batch
and optimizer: ``measure.VariantBench``) after warm-up steps, in a worker process of its own.
From the events it derives:

* the top operators by device time (the time of the kernels each launched) and by host time
  (the CPU time spent in the operator itself: Python dispatch, autograd, kernel launches);
* the device's busy and idle fractions over the steps: the union of the kernels' intervals
  against the steps' span, from the first step's start on the host to the end of the last
  kernel or step, whichever is later (CPU: n/a);
* the host-device syncs: on a GPU the runtime's synchronisation calls, each with the
  operator that made it and the frame of the project (or mmseg / mmengine / timm) that
  called that; on the CPU, where nothing waits, the operators that read a value back
  (``.item()``, boolean masks, ``nonzero``, ...), the ones that would wait on a GPU (some
  check values on the CPU only, e.g. ``F.one_hot``'s range check).

The full trace goes beside the table (Chrome trace format, gzipped; chrome://tracing or
https://ui.perfetto.dev open it).
"""
import gzip
import os
import os.path as osp
import shutil
import time
from typing import Dict, Iterable, List, Optional, Tuple

# Operators whose result the host reads, i.e. that wait for the device to get there.
SYNCING_OPS = ('aten::_local_scalar_dense', 'aten::nonzero', 'aten::masked_select',
               'aten::unique', 'aten::_unique2', 'aten::is_nonzero', 'aten::repeat_interleave')
SYNC_RUNTIME_CALLS = ('cudaStreamSynchronize', 'cudaDeviceSynchronize',
                      'cudaEventSynchronize', 'hipStreamSynchronize', 'hipDeviceSynchronize')
# Frames under these paths are where a sync is decided; torch's own are not.
CALLER_MARKERS = ('davpt_seg', 'harness', 'mmseg', 'mmengine', 'timm', 'tools')
STEP_LABEL = 'davpt_profile_step'
_SPEEDUPS = {True: "the recipe's speed-ups (FastSETRUPHead, compile_regions)",
             False: "stock (mmseg's SETR-PUP head, eager)"}


DEVICE_CATEGORIES = ('kernel', 'gpu_memcpy', 'gpu_memset')
LAUNCH_CALLS = ('cudaLaunchKernel', 'cudaLaunchKernelExC', 'cuLaunchKernel', 'cuLaunchKernelEx',
                'hipLaunchKernel')


def merged_length(intervals: Iterable[Tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of ``intervals`` clipped to ``[lo, hi]``."""
    total, end = 0., lo
    for start, stop in sorted(intervals):
        start, stop = max(start, end), min(stop, hi)
        if stop > start:
            total += stop - start
            end = stop
    return total


def _python_frame(name: str) -> Optional[str]:
    """``path(line): function`` of a Python frame in the project or mmseg / mmengine / timm
    (paths are relative to their ``sys.path`` entry), else None."""
    path = name.split('(', 1)[0]
    if '(' not in name or path.startswith(('torch/', '<')):
        return None
    return name if any(marker in path.split('/') for marker in CALLER_MARKERS) else None


class _Node:
    __slots__ = ('event', 'parent', 'child_op_us')

    def __init__(self, event: dict):
        self.event, self.parent, self.child_op_us = event, None, 0.


def _nest(events: List[dict]) -> List[_Node]:
    """Host events of one thread as a tree by time containment (what the profiler does)."""
    nodes, stack = [], []
    for event in sorted(events, key=lambda e: (e['ts'], -e.get('dur', 0))):
        node = _Node(event)
        end = event['ts'] + event.get('dur', 0)
        while stack and stack[-1][1] < end:
            stack.pop()
        if stack:
            node.parent = stack[-1][0]
        stack.append((node, end))
        nodes.append(node)
    return nodes


def _caller(node: _Node) -> str:
    """The innermost project (or mmseg / mmengine / timm) Python frame above an event, or
    the autograd node whose backward ran it."""
    parent = node.parent
    while parent is not None:
        name = parent.event['name']
        if parent.event.get('cat') == 'python_function':
            frame = _python_frame(name)
            if frame:
                return frame
        elif name.startswith('autograd::engine::evaluate_function: '):
            return 'backward of ' + name.split(': ', 1)[1]
        parent = parent.parent
    return 'n/a'


def _enclosing_op(node: _Node) -> Optional[_Node]:
    parent = node.parent
    while parent is not None and parent.event.get('cat') != 'cpu_op':
        parent = parent.parent
    return parent


def summarise_trace(trace: dict, steps: int, top: int = 15) -> dict:
    """Plain data from a Chrome trace of ``torch.profiler`` (see the module docstring):
    ``steps`` steps, each inside a ``record_function(STEP_LABEL)`` range. The trace, not
    ``prof.events()``, because its categories (host operators, Python frames, kernels with
    the id of the operator that launched them, runtime calls) read the same across torch
    versions."""
    events = [e for e in trace['traceEvents'] if e.get('ph') == 'X']
    step_ranges = [(e['ts'], e['ts'] + e['dur']) for e in events
                   if e['name'] == STEP_LABEL and e.get('cat') == 'user_annotation']
    if len(step_ranges) != steps:
        raise RuntimeError(f'the profile holds {len(step_ranges)} step ranges, not {steps}')
    lo = min(start for start, _ in step_ranges)
    device = [e for e in events if e.get('cat') in DEVICE_CATEGORIES and e['ts'] >= lo]
    hi = max([end for _, end in step_ranges] + [e['ts'] + e['dur'] for e in device])
    span_us = hi - lo
    busy_us = merged_length(((e['ts'], e['ts'] + e['dur']) for e in device), lo, hi) \
        if device else None
    device_us_of = {}
    for event in device:
        key = event.get('args', {}).get('External id')
        device_us_of[key] = device_us_of.get(key, 0.) + event['dur']

    # Host events inside the steps only: the timing's own synchronisation after them is not
    # part of a step.
    host = [e for e in events if e.get('cat') in ('cpu_op', 'python_function', 'cuda_runtime',
                                                   'cuda_driver')
            and any(start <= e['ts'] <= end for start, end in step_ranges)]
    by_thread: Dict[object, List[dict]] = {}
    for event in host:
        by_thread.setdefault(event['tid'], []).append(event)
    nodes = [node for thread in by_thread.values() for node in _nest(thread)]
    for node in nodes:
        op = _enclosing_op(node) if node.event.get('cat') == 'cpu_op' else None
        if op is not None:
            op.child_op_us += node.event['dur']

    ops: Dict[str, dict] = {}
    syncs: Dict[Tuple[str, str], dict] = {}
    launches = top_level_calls = 0
    # With a device timeline, the runtime's own synchronisation calls are the syncs (an op
    # such as .item() of a CPU tensor does not wait); without one, the operators that would.
    runtime_syncs = bool(device)
    for node in nodes:
        event, category = node.event, node.event.get('cat')
        if event['name'] in LAUNCH_CALLS:
            launches += 1
        if event['name'] in SYNC_RUNTIME_CALLS:
            op = _enclosing_op(node)
            key = (op.event['name'] if op else event['name'], _caller(op or node))
            sync = syncs.setdefault(key, dict(op=key[0], caller=key[1], calls=0, host_us=0.))
            sync['calls'] += 1
            sync['host_us'] += event['dur']
        if category != 'cpu_op':
            continue
        host_us = event['dur'] - node.child_op_us
        device_us = device_us_of.get(event.get('args', {}).get('External id'), 0.)
        where = _caller(node)
        row = ops.setdefault(event['name'], dict(name=event['name'], calls=0, host_us=0.,
                                                 device_us=0., callers={}))
        row['calls'] += 1
        row['host_us'] += host_us
        row['device_us'] += device_us
        row['callers'][where] = row['callers'].get(where, 0.) + host_us + device_us
        if _enclosing_op(node) is None and not event['name'].startswith('autograd::'):
            top_level_calls += 1
        if not runtime_syncs and event['name'] in SYNCING_OPS:
            sync = syncs.setdefault((event['name'], where), dict(
                op=event['name'], caller=where, calls=0, host_us=0.))
            sync['calls'] += 1
            sync['host_us'] += host_us
    per_step = 1. / steps

    def rows(key: str) -> List[dict]:
        chosen = sorted((r for r in ops.values() if '::' in r['name'] and
                         not r['name'].startswith('autograd::') and r[key] > 0),
                        key=lambda r: -r[key])[:top]
        return [dict(name=r['name'], calls_per_step=r['calls'] * per_step,
                     host_ms_per_step=r['host_us'] * per_step / 1e3,
                     device_ms_per_step=r['device_us'] * per_step / 1e3,
                     main_caller=max(r['callers'], key=r['callers'].get)) for r in chosen]

    return dict(
        steps=steps, step_ms=span_us * per_step / 1e3,
        step_ms_each=[(end - start) / 1e3 for start, end in step_ranges],
        device_busy_ms_per_step=None if busy_us is None else busy_us * per_step / 1e3,
        device_idle_fraction=None if busy_us is None else 1. - busy_us / span_us,
        host_op_ms_per_step=sum(r['host_us'] for r in ops.values()) * per_step / 1e3,
        ops_per_step=top_level_calls * per_step,
        kernel_launches_per_step=launches * per_step,
        kernels_per_step=len(device) * per_step,
        syncs_are='runtime synchronisation calls' if runtime_syncs else
        'operators that read a value back; on an accelerator each waits',
        top_device=rows('device_us'), top_host=rows('host_us'),
        syncs=sorted(({**s, 'calls_per_step': s['calls'] * per_step,
                       'host_ms_per_step': s['host_us'] * per_step / 1e3}
                      for s in syncs.values()), key=lambda s: (-s['calls'], s['op'])))


def profile_variant(setting, variant: str, options: dict, precision: str = 'bf16',
                    steps: int = 3, warmup: int = 2, trace_path: Optional[str] = None,
                    top: int = 15) -> dict:
    """Profiles ``steps`` training steps of ``variant`` in this process (a worker's)."""
    from .measure import VariantBench
    bench = VariantBench(setting, variant, options)
    bench.set_phase('train')
    bench.set_mode(precision, compile=bench.compiled)
    summary = profile_bench(bench, steps, warmup, trace_path, top)
    summary.update(precision=precision, variant=variant)
    return summary


def profile_bench(bench, steps: int = 3, warmup: int = 2, trace_path: Optional[str] = None,
                  top: int = 15) -> dict:
    """Profiles ``steps`` steps of a ``measure.VariantBench`` in its current phase and mode,
    after ``warmup`` steps (the first ones allocate, autotune and compile)."""
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile, record_function
    for _ in range(warmup):
        bench.phase_step()
    bench._sync()
    activities = [ProfilerActivity.CPU]
    if bench.device.type == 'cuda':
        activities.append(ProfilerActivity.CUDA)
    plain_ms = bench.timed(steps) * 1e3  # the profiler's own overhead shows against this
    with profile(activities=activities, with_stack=True, record_shapes=False) as prof:
        for _ in range(steps):
            with record_function(STEP_LABEL):
                bench.phase_step()
        bench._sync()
    with tempfile.TemporaryDirectory() as scratch:
        raw = osp.join(scratch, 'trace.json')
        prof.export_chrome_trace(raw)
        with open(raw) as handle:
            summary = summarise_trace(json.load(handle), steps, top)
        if trace_path:
            os.makedirs(osp.dirname(osp.abspath(trace_path)), exist_ok=True)
            if trace_path.endswith('.gz'):
                with open(raw, 'rb') as src, gzip.open(trace_path, 'wb') as dst:
                    shutil.copyfileobj(src, dst)
            else:
                shutil.copyfile(raw, trace_path)
            summary['trace'] = trace_path
    summary.update(warmup=warmup, unprofiled_step_ms=plain_ms, info=bench.info(),
                   loss_finite=bench.last_loss_finite())
    return summary


def _profile_worker(conn, setting_dict: dict, variant: str, options: dict):
    from .measure import answer_once

    def profile_it():
        import torch

        from .settings import Setting
        torch.set_num_threads(options['threads'])
        kwargs = {k: options[k] for k in ('precision', 'steps', 'warmup', 'trace_path', 'top')}
        return profile_variant(Setting(**setting_dict), variant, options, **kwargs)
    answer_once(conn, profile_it)


def run_profile(setting, variant: str = 'da-vpt', device: str = 'cpu', precision: str = 'bf16',
                steps: int = 3, warmup: int = 2, threads: int = 1, sdpa: str = 'auto',
                trace_path: Optional[str] = None, top: int = 15, start_method: str = 'auto',
                recipe: bool = True, compile_backend: str = 'inductor',
                progress=print) -> dict:
    """:func:`profile_variant` in a fresh worker process; returns plain data. ``recipe``:
    with the one-GPU recipe's speed-ups (FastSETRUPHead, ``compile_regions``; ours only),
    else the stock step (mmseg's SETR-PUP head, eager)."""
    from dataclasses import asdict

    from .measure import _start_context, _Worker, describe_machine, loadavg, stamp_finish
    from .settings import PRECISIONS, VARIANTS
    if variant not in VARIANTS:
        raise ValueError(f'unknown variant {variant!r}: choose from {VARIANTS}')
    if precision not in PRECISIONS:
        raise ValueError(f'precision {precision!r} is not one of {PRECISIONS}')
    if steps < 1 or warmup < 1:
        raise ValueError('steps and warmup must be >= 1 (the first step allocates and '
                         'autotunes; it is not a typical step)')
    context, method = _start_context(start_method, device)
    recipe = recipe and not variant.startswith('mmseg-')
    options = dict(device=device, threads=threads, sdpa=sdpa, with_cp=False, amp=None,
                   precision=precision, steps=steps, warmup=warmup, trace_path=trace_path,
                   top=top, head='fast' if recipe else 'mmseg', compile_regions=recipe,
                   compile_backend=compile_backend)
    results = dict(kind='profile', setting=asdict(setting),
                   options=dict(options, start_method=method, variant=variant),
                   machine=describe_machine(device, threads),
                   started=time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
                   loadavg_start=loadavg())
    progress(f'profiling {variant} ({precision}, {steps} steps after {warmup} warm-up) for '
             f'{setting.description}')
    worker = _Worker(context, setting, variant, options, target=_profile_worker)
    try:
        results['profile'] = worker.reply()
    finally:
        worker.stop()
    results['machine']['device_name'] = results['profile']['info']['device_name']
    stamp_finish(results)
    return results


def profile_section_key(results: dict) -> str:
    options = results['options']
    return (f"profile-{results['setting']['name']}-{options['device'].split(':')[0]}-"
            f"{options['variant']}-{options['precision']}-b{results['setting']['batch_size']}"
            + ('' if options['compile_regions'] or options['head'] == 'fast' else '-stock'))


def render_profile_markdown(results: dict, command: str) -> str:
    from .report import machine_lines
    setting, options, prof = results['setting'], results['options'], results['profile']
    idle = prof['device_idle_fraction']
    lines = [
        f"### Profile: {options['variant']}, {setting['description'].split(', batch')[0]}, "
        f"batch {setting['batch_size']}, {options['precision']}, "
        f"{_SPEEDUPS[bool(options['compile_regions'])]} — "
        f"{results['machine']['device_name']}",
        '', '```', command, '```', '',
        *machine_lines(results['machine'], options),
        f"- Run: {results['started']} → {results['finished']}; {prof['steps']} profiled "
        f"training steps after {prof['warmup']} warm-up step(s)"
        + (f"; trace: `{osp.basename(prof['trace'])}` beside this file's run output"
           if prof.get('trace') else ''),
        '',
        f"- Step: {prof['step_ms']:.1f} ms profiled ({prof['unprofiled_step_ms']:.1f} ms "
        f"without the profiler); {prof['ops_per_step']:.0f} operator calls from Python and "
        f"autograd and {prof['kernel_launches_per_step']:.0f} kernel launches per step; host "
        f"time inside operators {prof['host_op_ms_per_step']:.1f} ms per step (the main and "
        'the autograd thread together)',
        ('- Device: n/a (CPU run: no device timeline)' if idle is None else
         f"- Device: busy {prof['device_busy_ms_per_step']:.1f} ms per step, **idle "
         f"{100 * idle:.1f} %** of the steps' span"),
        f"- Host-device syncs per step: {sum(s['calls_per_step'] for s in prof['syncs']):g} "
        f"({prof['syncs_are']})",
        '']
    for title, rows, key in (('device time', prof['top_device'], 'device_ms_per_step'),
                             ('host time', prof['top_host'], 'host_ms_per_step')):
        lines += [f'Top operators by {title} (self time, per step):', '',
                  '| operator | calls / step | device ms / step | host ms / step | mostly '
                  'called from |', '|---|---:|---:|---:|---|']
        lines += [f"| `{r['name']}` | {r['calls_per_step']:g} | {r['device_ms_per_step']:.2f} "
                  f"| {r['host_ms_per_step']:.2f} | `{r['main_caller']}` |"
                  for r in rows] or ['| none | | | | |']
        lines.append('')
    lines += ['Host-device syncs (operators that wait for the device, and where they are '
              'called):', '', '| operator | called from | calls / step | host ms / step |',
              '|---|---|---:|---:|']
    lines += [f"| `{s['op']}` | `{s['caller']}` | {s['calls_per_step']:g} | "
              f"{s['host_ms_per_step']:.2f} |" for s in prof['syncs']] or ['| none | | | |']
    return '\n'.join(lines) + '\n'
