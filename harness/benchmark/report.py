"""Markdown sections of the benchmark results (docs/benchmarks.md)."""
import math
from typing import List, Optional, Sequence

from ..markdown import update_generated_file
from .measure import fmt_bytes
from .settings import REFERENCE

def _fmt_flops(num: Optional[int]) -> str:
    return 'n/a' if not num else f'{num / 1e9:,.4g}'


def _fmt_ratio(num: Optional[float]) -> str:
    return 'n/a' if num is None else f'{num:.3f}'


def _verdict(ok: Optional[bool]) -> str:
    return 'not measured' if ok is None else ('**met**' if ok else '**not met**')


def section_key(results: dict) -> str:
    options = results['options']
    device = options['device'].split(':')[0]
    key = f"{results['setting']['name']}-{device}"
    if options.get('amp'):
        key += f"-{options['amp']}"
    if options.get('with_cp'):
        key += '-cp'
    return key


def machine_lines(machine: dict, options: dict) -> List[str]:
    """The Machine and Software lines every benchmark section starts with."""
    device = options['device']
    return [
        f"- Machine: {machine['cpu']}, {machine['cores']} cores available, "
        f"{options['threads']} torch thread(s); device `{device}`"
        f"{'' if device == 'cpu' else ' (' + str(machine.get('device_name')) + ')'}; "
        f"{machine['platform']}",
        f"- Software: torch {machine['torch']}, timm {machine['timm']}, mmseg "
        f"{machine['mmseg']}, mmcv {machine['mmcv']}, mmengine {machine['mmengine']}, "
        f"Python {machine['python']}; timm fused attention (SDPA): "
        f"{machine['timm_fused_attn']}, SDPA backend: {options.get('sdpa', 'auto')}"]


def _model_line(setting: dict, layout: Sequence[int]) -> str:
    return (
        f"- Model: {setting['arch']} geometry ({setting['depth']} blocks, width "
        f"{setting['embed_dim']}, {setting['num_heads']} heads, patch {setting['patch_size']}), "
        f"{setting['img_size']}×{setting['img_size']} input, batch {setting['batch_size']}: "
        f"{(setting['img_size'] // setting['patch_size']) ** 2} patch tokens + CLS, plus "
        f"{'/'.join(map(str, layout))} prompt tokens per block in the prompt modes "
        f"(guided block(s) {list(setting['guided_blocks'])} hold "
        f"{setting['num_guided_prompts']}); SETR-PUP decode head "
        f"({setting['decode_convs']} convs) + {len(setting['out_indices']) - 1} auxiliary "
        f"heads, {setting['head_channels']} channels, {setting['num_classes']} classes, BN")


def render_markdown(results: dict, command: str) -> str:
    setting, options = results['setting'], results['options']
    machine, entries = results['machine'], results['variants']
    layout = sorted(set(entries.get(REFERENCE, {}).get('prompt_tokens', []) or [0]))
    lines = [
        f"### {setting['description']} — {machine['device_name']}"
        f"{', bf16 autocast' if options.get('amp') else ''}"
        f"{', with_cp' if options.get('with_cp') else ''}",
        '',
        '```',
        command,
        '```',
        '',
        *machine_lines(machine, options),
        f"- Run: {results['started']} → {results['finished']}; load average (1/5/15 min) "
        f"{results['loadavg_start']} at start, {results['loadavg_end']} at end; "
        f"{options['repeats']} interleaved rounds × {options['iters']} step(s) after "
        f"{options['warmup']} warm-up step(s) per variant, workers started by "
        f"{options['start_method']}",
        _model_line(setting, layout),
        '',
        '| variant | what trains | trainable params | train step ms (median, min–max) | '
        'train img/s | train step × VPT-Deep | train GFLOPs | inference ms | inference '
        'img/s | inference × VPT-Deep | inference GFLOPs | peak mem train | peak mem '
        'inference |',
        '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for variant, e in entries.items():
        lines.append(
            f"| {variant} | {e['note']} | {e['trainable'] / 1e6:.3f}M "
            f"(backbone {e['trainable_backbone'] / 1e6:.3f}M) | "
            f"{e['train_ms']:.1f} ({e['train_ms_min']:.1f}–{e['train_ms_max']:.1f}) | "
            f"{e['train_img_per_s']:.2f} | {_fmt_ratio(e['train_ratio_vs_vpt_deep'])} | "
            f"{_fmt_flops(e.get('train_flops'))} | "
            f"{e['infer_ms']:.1f} ({e['infer_ms_min']:.1f}–{e['infer_ms_max']:.1f}) | "
            f"{e['infer_img_per_s']:.2f} | {_fmt_ratio(e['infer_ratio_vs_vpt_deep'])} | "
            f"{_fmt_flops(e.get('infer_flops'))} | {fmt_bytes(e['train_peak_bytes'])} | "
            f"{fmt_bytes(e['infer_peak_bytes'])} |")
    memory_kind = 'max_memory_allocated' if options['device'] != 'cpu' else \
        'rise of the worker\'s resident-set high-water mark over its RSS before the model ' \
        'was built (weights, gradients, optimizer state, activations, allocator slack)'
    lines += ['', f'Peak memory: {memory_kind}. Ratios: median over rounds of the per-round '
              'time ratio (each round runs every variant back to back). GFLOPs: '
              '`torch.utils.flop_counter` over one step (forward + backward for training).',
              '']
    lines += _targets(results)
    return '\n'.join(lines) + '\n'


def memory_section_key(results: dict) -> str:
    return f"memory-{results['setting']['name']}-{results['options']['device'].split(':')[0]}"


def merge_memory_results(earlier: dict, now: dict) -> dict:
    """``now``'s rows replace ``earlier``'s rows of the same variant and with_cp; the other
    rows of ``earlier`` are kept, in its order. For completing a table one row at a time
    (each row is a fresh process, so rows measured at different times compare)."""
    for part, field in (('setting', 'name'), ('options', 'device'), ('options', 'steps')):
        if earlier[part].get(field) != now[part].get(field):
            raise ValueError(f'the results to merge differ in {part}.{field}: '
                             f'{earlier[part].get(field)!r} vs {now[part].get(field)!r}')
    measured = {(run['variant'], run['with_cp']): run for run in now['runs']}
    runs = [measured.pop((run['variant'], run['with_cp']), run) for run in earlier['runs']]
    history = earlier.get('history') or [
        {key: earlier[key] for key in ('command', 'started', 'finished') if key in earlier}]
    return dict(now, runs=runs + list(measured.values()), history=history)


def render_memory_markdown(results: dict, command: str) -> str:
    setting, options, machine = results['setting'], results['options'], results['machine']
    on_cpu = options['device'] == 'cpu'
    layout = sorted({n for run in results['runs'] for n in run.get('prompt_tokens', [])
                     if n} or {0})
    lines = [
        f"### Training-step peak memory: {setting['description']} — "
        f"{machine['device_name']}", '', '```', command, '```', '',
        *machine_lines(machine, options),
        f"- Run: {results['started']} → {results['finished']}; load average (1/5/15 min) "
        f"{results['loadavg_start']} at start, {results['loadavg_end']} at end; "
        f"{fmt_bytes(results['mem_available_start'])} available at start; one fresh "
        f"process per row, one at a time ({options['start_method']}), "
        f"{options['steps']} training steps each (forward, backward, AdamW step)",
        *[f"- Rows this command did not measure come from `{old['command']}`, run "
          f"{old['started']} → {old['finished']}" for old in results.get('history', [])],
        _model_line(setting, layout), '',
    ]
    if on_cpu:
        lines += ['| variant | what trains | with_cp | trainable params | RSS baseline | '
                  'RSS after build | peak RSS | peak − baseline | s/step |',
                  '|---|---|---|---:|---:|---:|---:|---:|---:|']
    else:
        lines += ['| variant | what trains | with_cp | trainable params | max allocated | '
                  's/step |', '|---|---|---|---:|---:|---:|']
    for run in results['runs']:
        head = f"| {run['variant']} | {run['note']} | {'yes' if run['with_cp'] else 'no'} | "
        if 'error' in run:
            lines.append(head + f"{run['error']} |" + ' |' * (5 if on_cpu else 1))
            continue
        params = f"{run['trainable'] / 1e6:.1f}M"
        if on_cpu:
            lines.append(head + f"{params} | {fmt_bytes(run['rss_baseline_bytes'])} | "
                         f"{fmt_bytes(run['rss_model_bytes'])} | "
                         f"{fmt_bytes(run['peak_rss_bytes'])} | "
                         f"**{fmt_bytes(run['peak_bytes'])}** | {run['step_seconds']:.1f} |")
        else:
            lines.append(head + f"{params} | **{fmt_bytes(run['peak_bytes'])}** | "
                         f"{run['step_seconds']:.1f} |")
    kind = ('peak − baseline: the rise of the process\'s resident-set high-water mark '
            '(`VmHWM`) over its RSS before the model was built, i.e. without the Python '
            'interpreter, torch, mmseg and the other libraries') if on_cpu else \
        'max allocated: `max_memory_allocated`'
    lines += ['', f'{kind}.', '']
    return '\n'.join(lines)


def _targets(results: dict) -> List[str]:
    entries, options = results['variants'], results['options']
    speedups = results.get('speedups', {})
    on_cpu = options['device'] == 'cpu'
    lines = ['Targets:', '']
    davpt = entries.get('da-vpt')
    if davpt:
        ratio = davpt['train_ratio_vs_vpt_deep']
        flops = davpt.get('train_flops_ratio_vs_vpt_deep')
        lines.append(f"- DA-VPT training step ≤ 1.03× VPT-Deep: {ratio:.3f}× time "
                     f"(FLOPs {'n/a' if flops is None else f'{flops:.4f}'}×) — "
                     f"{_verdict(ratio <= 1.03)}")
        ratio = davpt['infer_ratio_vs_vpt_deep']
        flops = davpt.get('infer_flops_ratio_vs_vpt_deep')
        same = (davpt.get('infer_flops') == entries[REFERENCE].get('infer_flops')
                and davpt.get('infer_flops') is not None)
        lines.append(f"- DA-VPT inference identical in cost to VPT-Deep: FLOPs "
                     f"{'identical' if same else _fmt_ratio(flops) + '×'}, "
                     f"time {ratio:.3f}× "
                     f"(timing noise only) — {_verdict(same if flops else None)}")
    threshold = 1.0 if on_cpu else 1.3
    for pair, label in (('mmseg-full/full', 'full fine-tune'),
                        ('mmseg-frozen/linear', 'frozen trunk')):
        if pair in speedups:
            train, infer = speedups[pair]['train'], speedups[pair]['infer']
            lines.append(
                f"- our backbone vs mmseg's VisionTransformer, same tokens, {label}: "
                f"{train:.3f}× as fast in training, {infer:.3f}× in inference (target "
                f"≥ {threshold:.1f}× on {'CPU' if on_cpu else 'GPU'}) — "
                f"{_verdict(min(train, infer) >= threshold)}")
    if 'mmseg-frozen/vpt-deep' in speedups:
        infer = speedups['mmseg-frozen/vpt-deep']['infer']
        lines.append(f"- for reference, VPT-Deep (its prompt tokens included) vs mmseg's "
                     f"frozen ViT in inference: {infer:.3f}× as fast")
    memory_target = results['setting']['name'] == 'vit-l-512' and not on_cpu and \
        options.get('with_cp') and results['setting']['batch_size'] == 2
    if memory_target:
        peaks = {v: e['train_peak_bytes'] for v, e in entries.items()
                 if v in ('vpt-deep', 'da-vpt', 'da-vpt+')}
        worst = max(peaks.values())
        lines.append(f"- peak GPU memory, ViT-L 512², batch 2, with_cp ≤ 8 GB: "
                     f"{', '.join(f'{v} {fmt_bytes(b)}' for v, b in peaks.items())} — "
                     f"{_verdict(worst <= 8e9)}")
    else:
        lines.append('- peak GPU memory, ViT-L 512², batch 2, with_cp ≤ 8 GB: not measured '
                     'in this run (needs `--setting vit-l-512 --device cuda --with-cp`)')
    return lines


DOC_HEADER = """# Benchmarks

Training step (forward + backward + optimizer step), throughput, peak memory and trainable
parameters of the PEFT variants, all on the same SETR-PUP segmentor; written by
`tools/analysis_tools/benchmark.py` (each run replaces its own section, keyed by setting,
device and options). How it measures: see the docstring of `harness/benchmark/measure.py`.

"""


def update_doc(path: str, key: str, body: str):
    """Replaces (or appends) the section ``key`` of ``path``, keeping everything else."""
    update_generated_file(path, f'benchmark:{key}', body.rstrip('\n'), header=DOC_HEADER)


REQUIRED_FIELDS = ('trainable', 'trainable_backbone', 'trainable_heads', 'train_seconds',
                   'train_ms', 'train_img_per_s', 'train_ratio_vs_vpt_deep',
                   'train_peak_bytes', 'infer_seconds', 'infer_ms', 'infer_img_per_s',
                   'infer_ratio_vs_vpt_deep', 'infer_peak_bytes')


def finite(num) -> bool:
    return isinstance(num, (int, float)) and math.isfinite(num)


def suite_section_key(results: dict) -> str:
    return f"suite-{results['setting']['name']}-{results['options']['device'].split(':')[0]}"


def render_suite_markdown(results: dict, command: str) -> str:
    """The suite's section: every (variant, with_cp, mode) row, the smoke training, what
    the budget skipped, and the lines that answer the targets."""
    setting, options, machine = results['setting'], results['options'], results['machine']
    on_cpu = options['device'] == 'cpu'
    layout = sorted({setting['num_prompts'], setting['num_guided_prompts']})
    budget = options.get('budget_s')
    lines = [
        f"### One-call benchmark: {setting['description']} — "
        f"{machine.get('device_name') or options['device']}", '', '```', command, '```', '',
        *machine_lines(machine, options),
        f"- Run: {results['started']} → {results['finished']}, "
        f"{results['elapsed_seconds']:.0f} s in all"
        f"{f' (budget {budget:.0f} s)' if budget else ''}; load average (1/5/15 min) "
        f"{results['loadavg_start']} at start, {results['loadavg_end']} at end; one worker "
        f"per variant and with_cp ({options['start_method']}); per mode "
        f"{options['warmup']} warm-up step(s), then {options['repeats']} interleaved rounds "
        f"× {options['iters']} step(s); stages: " + '; '.join(
            f'{name} {seconds:.0f} s' for name, seconds in results['stage_seconds'].items()),
        _model_line(setting, layout), '',
        '| variant | with_cp | precision | train step ms (median, min–max) | img/s | '
        '× VPT-Deep | × fp32 eager | compiled × eager | peak memory | loss finite |',
        '|---|---|---|---:|---:|---:|---:|---:|---:|---|',
    ]
    for row in sorted(results['rows'], key=lambda r: (r['with_cp'], r['compile'],
                                                       PRECISION_ORDER[r['precision']],
                                                       r['variant'] != 'mmseg-full',
                                                       r['variant'])):
        head = (f"| {row['variant']} | {'yes' if row['with_cp'] else 'no'} | "
                f"{row['precision']}{' + compile' if row['compile'] else ''} | ")
        if 'step_ms' not in row:
            lines.append(head + f"{row.get('error', 'not timed')} |" + ' |' * 6)
            continue
        lines.append(
            head + f"{row['step_ms']:.1f} ({row['step_ms_min']:.1f}–{row['step_ms_max']:.1f})"
            f" | {row['img_per_s']:.2f} | {_fmt_ratio(row['ratio_vs_vpt_deep'])} | "
            f"{_fmt_ratio(row['ratio_vs_fp32_eager'])} | {_fmt_ratio(row['ratio_vs_eager'])} | "
            f"{fmt_bytes(row.get('peak_bytes'))} | "
            f"{'yes' if row.get('loss_finite') else 'NO'} |")
    memory_kind = ('the worker\'s RSS high-water mark over its RSS before the model build, '
                   'after earlier modes (an upper bound)') if on_cpu else \
        '`max_memory_allocated` over one training step'
    cpu_note = '; on the CPU tf32 is fp32' if on_cpu else ''
    lines += ['', f"Precision: fp32 = TF32 off; tf32 = TF32 matmuls and convolutions; bf16 = "
              f"bf16 autocast with TF32 for what stays fp32 (`tools/train.py --amp`){cpu_note}. "
              f"Compile: each transformer block `torch.compile`d "
              f"(backend {options['compile_backend']}, static shapes), the rest eager. Ratios: "
              f"medians of per-round time ratios (< 1: faster). Peak memory: {memory_kind}.", '']
    for skipped in results['skipped']:
        lines.append(f"- skipped: {skipped['stage']} ({skipped['reason']})")
    lines += _smoke_lines(results.get('smoke')) + _suite_targets(results)
    return '\n'.join(lines) + '\n'


PRECISION_ORDER = {'fp32': 0, 'tf32': 1, 'bf16': 2}


def _smoke_lines(smoke: Optional[dict]) -> List[str]:
    if smoke is None:
        return ['- smoke training: not run']
    if 'error' in smoke:
        return [f"- smoke training of `{smoke['config']}`: **failed**: {smoke['error']}"]
    peak = f", peak {fmt_bytes(smoke['peak_bytes'])}" if smoke.get('peak_bytes') else ''
    return [
        f"- smoke training of `{smoke['config']}` (random trunk, no pretrained file), "
        f"{smoke['iters']} iterations at batch {smoke['batch_size']}, {smoke['precision']}, on "
        f"{smoke['images']} synthetic {smoke['image_size']}² ADE20K-layout images: loss "
        f"{smoke['loss_first']:.3f} → {smoke['loss_last']:.3f} (max {smoke['loss_max']:.3f}), "
        f"every loss term finite: {smoke['losses_finite']}, trained weights finite: "
        f"{smoke['weights_finite']}; {smoke['iter_ms_median']:.0f} ms/iteration (median, "
        f"data loading included){peak}, {smoke['seconds']:.0f} s — "
        f"{'**passed**' if smoke['passed'] else '**failed**'}"]


def _suite_targets(results: dict) -> List[str]:
    rows = {(r['variant'], r['with_cp'], r['precision'], r['compile']): r
            for r in results['rows'] if 'step_ms' in r}
    lines = []
    for with_cp in (False, True):
        row = rows.get(('da-vpt', with_cp, 'bf16', False))
        if row:
            lines.append(f"- DA-VPT training step ≤ 1.03× VPT-Deep (bf16, with_cp "
                         f"{'on' if with_cp else 'off'}): {row['ratio_vs_vpt_deep']:.3f}× — "
                         f"{_verdict(row['ratio_vs_vpt_deep'] <= 1.03)}")
    if results['setting']['name'] == 'vit-l-512' and results['options']['device'] != 'cpu':
        for precision in ('fp32', 'bf16'):
            row = rows.get(('da-vpt', True, precision, False))
            if row:
                lines.append(f"- peak GPU memory, DA-VPT, ViT-L 512², batch 2, with_cp, "
                             f"{precision}: {fmt_bytes(row['peak_bytes'])} ≤ 8 GB — "
                             f"{_verdict(row['peak_bytes'] <= 8e9)}")
    for (variant, with_cp, precision, compiled), row in rows.items():
        if compiled and row['ratio_vs_eager'] is not None:
            lines.append(f"- torch.compile, {variant}, {precision}, with_cp "
                         f"{'on' if with_cp else 'off'}: {row['ratio_vs_eager']:.3f}× the "
                         f"eager step time")
    return lines
