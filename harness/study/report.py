"""Tables and plots of a seeded study (``tools/study.py STUDY report``).

The report is part hand-written, part generated: the generated parts sit between
``<!-- BEGIN GENERATED: name -->`` and ``<!-- END GENERATED: name -->`` markers
(:mod:`harness.markdown`) and are replaced on every render, everything else (the findings,
the reasoning) is kept as written. Which blocks a report has is the study file's ``blocks``.

Runs made on different devices (the CPU, a GPU by its name: each record's ``device``) are
never paired or pooled: every table over a schedule's runs is made per device, and
:func:`by_variant` refuses records of more than one.
"""
import math
import os
import os.path as osp
from collections import defaultdict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..markdown import replace_block
from .runner import UNKNOWN_DEVICE, record_device
from .spec import Contrast, Schedule, Study

# VPT-Deep must beat the heads alone by this many of its own seed std for a schedule to
# have the power to tell prompt variants apart (the "power" block).
POWER_FACTOR = 3.0
# Curves are smoothed over this many logs (5 logs = 50 iterations): the plots' moving mean
# and the training table's "last 50 iterations" use the same window, so they agree.
CURVE_TAIL = 5


def mean_std(values: Sequence[float]):
    """Mean and sample standard deviation (``nan`` for fewer than two values)."""
    values = list(values)
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def fmt(mean: float, std: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return '–'
    if math.isnan(std):
        return f'{mean:.{digits}f}'
    return f'{mean:.{digits}f} ± {std:.{digits}f}'


def signed(mean: float, std: float) -> str:
    if math.isnan(mean):
        return '–'
    text = f'{mean:+.2f}'
    return text if math.isnan(std) else f'{text} ± {std:.2f}'


def by_variant(records: List[dict]) -> Dict[str, Dict[int, dict]]:
    """``{variant: {seed: record}}``, what every table pairs and pools: so the records must
    come from one device (split them with :func:`by_device` first)."""
    devices = sorted({record_device(r) for r in records})
    if len(devices) > 1:
        raise ValueError(f'runs from devices {devices} would be paired or pooled; split them '
                         'with by_device() and tabulate each device on its own')
    grouped: Dict[str, Dict[int, dict]] = defaultdict(dict)
    for record in records:
        grouped[record['variant']][record['seed']] = record
    return grouped


DeviceGroups = List[Tuple[str, List[dict]]]


def by_device(records: List[dict]) -> DeviceGroups:
    """``[(device, its records)]``, the device with the most runs first (ties by name)."""
    grouped: Dict[str, List[dict]] = defaultdict(list)
    for record in records:
        grouped[record_device(record)].append(record)
    return sorted(grouped.items(), key=lambda item: (-len(item[1]), item[0]))


def device_name(device: str) -> str:
    return {'cpu': 'CPU', UNKNOWN_DEVICE: 'unrecorded device'}.get(device, device)


def _the(device: str) -> str:
    return f'the {device_name(device)}' if device in ('cpu', UNKNOWN_DEVICE) else device


def _runs(count: int) -> str:
    return f'{count} run' if count == 1 else f'{count} runs'


def devices_line(schedule: str, groups: DeviceGroups) -> str:
    """Where a schedule's runs trained, for the top of its table."""
    if not groups:
        return ''
    if len(groups) == 1:
        device, records = groups[0]
        every = 'The run' if len(records) == 1 else f'All {len(records)} runs'
        return f'{every} of schedule `{schedule}` trained on {_the(device)}.'
    where = ', '.join(f'{_the(device)} ({_runs(len(records))})' for device, records in groups)
    return (f'The runs of schedule `{schedule}` trained on {where}. Runs on different devices '
            'are neither paired nor pooled: each device has its own table.')


def per_device(groups: DeviceGroups, render: Callable[[Dict[str, Dict[int, dict]]], str]
               ) -> str:
    """``render`` on each device's runs; one device needs no caption."""
    if not groups:
        return render({})
    if len(groups) == 1:
        return render(by_variant(groups[0][1]))
    return '\n\n'.join(f'On {_the(device)} ({_runs(len(records))}):\n\n'
                        f'{render(by_variant(records))}' for device, records in groups)


def paired_differences(runs: Dict[str, Dict[int, dict]], variant: str,
                       other: str) -> Dict[int, float]:
    """``mIoU(variant) - mIoU(other)`` per seed both ran, in seed order.

    The same seed gives both arms the same data order, head initialisation and prompts
    initialisation, so the paired difference removes most of the seed-to-seed swing.
    """
    seeds = sorted(set(runs.get(variant, {})) & set(runs.get(other, {})))
    return {s: runs[variant][s]['mIoU'] - runs[other][s]['mIoU'] for s in seeds}


def paired_difference(runs: Dict[str, Dict[int, dict]], variant: str, other: str):
    """Mean ± std over the seeds both ran of ``mIoU(variant) - mIoU(other)``, and n."""
    diffs = paired_differences(runs, variant, other)
    mean, std = mean_std(diffs.values())
    return mean, std, len(diffs)


def _millions(count: Optional[int]) -> str:
    if count is None:
        return '–'
    return f'{count / 1e6:.2f}M' if count >= 1e5 else f'{count / 1e3:.1f}k'


def main_table(runs, variants, baseline: str, names: Optional[Sequence[str]] = None,
               configs: Optional[Dict[str, str]] = None) -> str:
    """One row per variant of the ``main`` group (or of ``names``) that has runs;
    ``configs``: the config to name per variant where it is not the variant's own."""
    lines = ['| variant | config | trainable | seeds | val mIoU (mean ± std) | per seed | '
             f'Δ vs {baseline} (paired) | min/run |',
             '|---|---|---|---|---|---|---|---|']
    for variant in variants:
        wanted = variant.name in names if names is not None else variant.group == 'main'
        if not wanted or variant.name not in runs:
            continue
        seeds = runs[variant.name]
        values = [seeds[s]['mIoU'] for s in sorted(seeds)]
        trainable = next(iter(seeds.values())).get('trainable_parameters')
        minutes = mean_std([r['wall_seconds'] / 60 for r in seeds.values()])[0]
        delta = '–' if variant.name == baseline else \
            signed(*paired_difference(runs, variant.name, baseline)[:2])
        config = (configs or {}).get(variant.name, f'`{osp.basename(variant.config)}`')
        lines.append(
            f'| {variant.name} | {config} | {_millions(trainable)} | '
            f'{len(values)} | **{fmt(*mean_std(values))}** | '
            f'{" / ".join(f"{v:.2f}" for v in values)} | {delta} | {minutes:.0f} |')
    return '\n'.join(lines)


def contrast_table(runs, contrasts: Sequence[Contrast]) -> str:
    """The study's own paired questions (a variant against its control), seed by seed;
    the last column is the mean's distance from zero in paired stds (2 is the bar)."""
    lines = ['| question | variant − against | seeds | Δ per seed | Δ (paired) | '
             'distance from 0 (paired stds) |',
             '|---|---|---|---|---|---|']
    for contrast in contrasts:
        a, b = contrast.variant, contrast.against
        diffs = paired_differences(runs, a, b)
        if not diffs:
            continue
        mean, std = mean_std(diffs.values())
        ratio = '–' if math.isnan(std) or std == 0 else f'{abs(mean) / std:.1f}'
        lines.append(f'| {contrast.question} | {a} − {b} | {len(diffs)} | '
                     f'{" / ".join(f"{d:+.2f}" for d in diffs.values())} | '
                     f'{signed(mean, std)} | {ratio} |')
    return '\n'.join(lines)


def main_schedule_configs(study: Study) -> Dict[str, str]:
    """What each variant ran under a main schedule that changes the configs: its final
    config where the study wrote one (equal to it, tested), else config + schedule."""
    schedule = study.schedule()
    if not schedule.options and schedule.iters is None:
        return {}
    return {variant.name: f'`{osp.basename(study.final_configs[variant.name])}`'
            if variant.name in study.final_configs
            else f'`{osp.basename(variant.config)}` + schedule `{schedule.name}`'
            for variant in study.variants}


def ablation_table(runs, variants, reference: str, baseline: str) -> str:
    lines = [f'| switch | variant | what changes from `{reference}` | seeds | val mIoU | '
             f'Δ vs {reference} (paired) | Δ vs {baseline} (paired) |',
             '|---|---|---|---|---|---|---|']
    rows = [v for v in variants if v.name in runs and
            (v.group != 'main' or v.name in (reference, baseline))]
    # The reference and baseline first, then each switch where the study file first names
    # it (its ablations before what goes beyond the paper); sort() is stable.
    order = {reference: 0, baseline: 1}
    first_of_group = {}
    for index, variant in enumerate(variants):
        first_of_group.setdefault(variant.group, index)
    rows.sort(key=lambda v: (order.get(v.name, 2), first_of_group[v.group]))
    for variant in rows:
        seeds = runs[variant.name]
        values = [seeds[s]['mIoU'] for s in sorted(seeds)]
        to_ref = '–' if variant.name == reference else \
            signed(*paired_difference(runs, variant.name, reference)[:2])
        to_base = '–' if variant.name == baseline else \
            signed(*paired_difference(runs, variant.name, baseline)[:2])
        group = 'reference' if variant.name == reference else \
            'baseline' if variant.name == baseline else variant.group
        lines.append(f'| {group} | {variant.name} | {variant.description} | {len(values)} | '
                     f'{fmt(*mean_std(values))} | {to_ref} | {to_base} |')
    return '\n'.join(lines)


def _curve_end(record: dict, key: str) -> float:
    values = record.get('curves', {}).get(key) or []
    tail = values[-CURVE_TAIL:]
    return sum(tail) / len(tail) if tail else math.nan


def _curve_start(record: dict, key: str) -> float:
    values = record.get('curves', {}).get(key) or []
    return values[0] if values else math.nan


def training_table(runs, variants) -> str:
    """How each variant trained: the segmentation loss it reached on the training crops, and
    where its metric losses started and ended (as logged, i.e. weighted by beta / gamma).

    Tells apart a metric loss that competes with segmentation (higher final CE) from one
    that cannot be lowered at all (start ≈ end), which mIoU alone cannot."""
    lines = ['| variant | seeds | train CE, last 50 its | loss_prompt_token, first → last 50 | '
             'loss_prompt_cls, first → last 50 | val mIoU |',
             '|---|---|---|---|---|---|']

    def start_end(records, key):
        if not any(key in r.get('curves', {}) for r in records):
            return '–'
        start = mean_std([_curve_start(r, key) for r in records])[0]
        end = mean_std([_curve_end(r, key) for r in records])[0]
        return f'{start:.3f} → {end:.3f}'

    for variant in variants:
        if variant.name not in runs:
            continue
        records = [runs[variant.name][s] for s in sorted(runs[variant.name])]
        ce = mean_std([_curve_end(r, 'decode.loss_ce') for r in records])
        lines.append(f'| {variant.name} | {len(records)} | {fmt(*ce, digits=3)} | '
                     f'{start_end(records, "loss_prompt_token")} | '
                     f'{start_end(records, "loss_prompt_cls")} | '
                     f'{fmt(*mean_std([r["mIoU"] for r in records]))} |')
    return '\n'.join(lines)


def per_class_table(runs, variants, names: Sequence[str]) -> str:
    shown = [v for v in variants if v.name in runs and v.name in names]
    if not shown:
        return '(no runs yet)'
    classes = list(next(iter(runs[shown[0].name].values()))['per_class_iou'])
    lines = ['| class | ' + ' | '.join(v.name for v in shown) + ' |',
             '|---|' + '---|' * len(shown)]
    for cls in classes:
        cells = []
        for variant in shown:
            values = [r['per_class_iou'].get(cls) for r in runs[variant.name].values()]
            values = [v for v in values if v is not None and not math.isnan(v)]
            cells.append(fmt(*mean_std(values), digits=1))
        lines.append(f'| {cls} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def runs_table(runs: List[Tuple[str, dict]]) -> str:
    """Every run, as (schedule, record) pairs: records written before the runner recorded
    their schedule and device have neither field."""
    lines = ['| variant | seed | schedule | device | mIoU | aAcc | iterations | train min | '
             'commit |',
             '|---|---|---|---|---|---|---|---|---|']
    for schedule, r in sorted(runs, key=lambda run: (run[1]['variant'], run[1]['seed'])):
        commit = (r.get('git_commit') or '')[:9]
        lines.append(f"| {r['variant']} | {r['seed']} | {schedule} | "
                     f"{device_name(record_device(r))} | {r['mIoU']:.2f} | "
                     f"{r.get('aAcc') or float('nan'):.2f} | {r.get('iterations')} | "
                     f"{r['train_seconds'] / 60:.1f} | {commit} |")
    return '\n'.join(lines)


def _scores(runs: Dict[str, Dict[int, dict]], variant: str) -> str:
    values = [r['mIoU'] for r in runs.get(variant, {}).values()]
    return f'{fmt(*mean_std(values))} (n={len(values)})' if values else '–'


def length_table(study: Study, schedule_groups: Dict[str, DeviceGroups],
                 schedule: Schedule) -> str:
    """A longer (or other) schedule beside the main one: per variant the val mIoU and the
    paired Δ against the baseline under each schedule, then the study's contrasts likewise.

    Every Δ pairs runs of one schedule on one device (a column per schedule and device);
    schedules and devices meet only through their Δs, never in one pair or mean. The rows are
    the schedule's variants (its ``variants``, and any other that ran under it)."""
    main = study.schedule()
    columns = [(s, device, by_variant(records)) for s in (main, schedule)
               for device, records in schedule_groups.get(s.name, [])]
    ran = {name for s, _, runs in columns if s is schedule for name in runs}
    wanted = set(schedule.variants) | ran
    rows = [v.name for v in study.variants if v.name in wanted]
    heads = [f'`{s.name}` on {device_name(device)}' for s, device, _ in columns]
    if not ran:
        columns.append((schedule, None, {}))
        heads.append(f'`{schedule.name}` (not run yet)')
    baseline = study.baseline
    lines = ['| variant | ' + ' | '.join(f'{head}: val mIoU | Δ vs {baseline} (paired)'
                                         for head in heads) + ' |',
             '|---|' + '---|---|' * len(heads)]
    for name in rows:
        cells = []
        for _, _, runs in columns:
            delta = '–' if name == baseline else \
                signed(*paired_difference(runs, name, baseline)[:2])
            cells += [_scores(runs, name), delta]
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    contrasts = [c for c in study.contrasts if c.variant in rows and c.against in rows]
    if contrasts:
        lines += ['', '| question | variant − against | ' +
                  ' | '.join(f'{head}: Δ (paired)' for head in heads) + ' |',
                  '|---|---|' + '---|' * len(heads)]
        for contrast in contrasts:
            cells = []
            for _, _, runs in columns:
                mean, std, n = paired_difference(runs, contrast.variant, contrast.against)
                cells.append('–' if not n else f'{signed(mean, std)} (n={n})')
            lines.append(f'| {contrast.question} | {contrast.variant} − {contrast.against} | '
                         + ' | '.join(cells) + ' |')
    if not ran:
        count = len(schedule.variants or study.variants) * max(len(schedule.seeds), 1)
        lines += ['', f'No runs of `{schedule.name}` yet: `python tools/study.py {study.name} '
                  f'run --schedule {schedule.name} --jobs {count}` makes its {count} runs, all '
                  'at once.']
    return '\n'.join(lines)


# ------------------------------------------------------------------------------- plots
def plot_miou(runs, variants, baseline: str, path: str, dataset: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    shown = [v for v in variants if v.name in runs]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(shown) + 1.2))
    for row, variant in enumerate(shown):
        values = [r['mIoU'] for r in runs[variant.name].values()]
        mean, std = mean_std(values)
        color = 'tab:blue' if variant.group == 'main' else 'tab:orange'
        ax.scatter(values, [row] * len(values), color=color, alpha=0.6, s=18, zorder=3)
        if not math.isnan(std):
            ax.errorbar(mean, row, xerr=std, color='black', capsize=3, lw=1, zorder=2)
        ax.scatter([mean], [row], color='black', marker='|', s=120, zorder=4)
    if baseline in runs:
        ax.axvline(mean_std([r['mIoU'] for r in runs[baseline].values()])[0],
                   color='gray', ls='--', lw=0.8, label=f'{baseline} mean')
        ax.legend(loc='lower right', fontsize=8)
    ax.set_yticks(range(len(shown)), [v.name for v in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f'{dataset} val mIoU (dots: seeds; bar: mean ± std)')
    ax.grid(axis='x', alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _smooth(values: List[float], window: int = CURVE_TAIL) -> List[float]:
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1):i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def _mean_curve(records: List[dict], key: str):
    curves = [(r['curves']['iter'], r['curves'][key]) for r in records
              if key in r.get('curves', {}) and r['curves'][key]]
    if not curves:
        return None, None
    length = min(len(c[1]) for c in curves)
    iters = curves[0][0][:length]
    mean = [sum(c[1][i] for c in curves) / len(curves) for i in range(length)]
    return iters, _smooth(mean)


def plot_curves(runs, variants, names: Sequence[str], path: str) -> List[Dict[str, str]]:
    """Saves the curves; returns each panel's {variant: colour}."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    keys = (('decode.loss_ce', 'segmentation loss (decode head)'),
            ('loss_prompt_token', 'weighted token metric loss'),
            ('loss_prompt_cls', 'weighted CLS metric loss'))
    shown = [v.name for v in variants if v.name in runs and v.name in names]
    # One colour per variant in every panel: the metric-loss panels lack the variants
    # without metric losses, and matplotlib's per-axes colour cycle would shift.
    colors = {name: f'C{index % 10}' for index, name in enumerate(shown)}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (key, title) in zip(axes, keys):
        for name in shown:
            iters, curve = _mean_curve(list(runs[name].values()), key)
            if iters is not None:
                ax.plot(iters, curve, label=name, lw=1.2, color=colors[name])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel('iteration')
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle('training curves (mean over seeds, 5-point moving average)', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    drawn = [{line.get_label(): line.get_color() for line in ax.get_lines()} for ax in axes]
    plt.close(fig)
    return drawn


def power_table(schedule_groups: Dict[str, DeviceGroups], study: Study) -> str:
    """Per schedule and device: the heads alone against VPT-Deep, and whether the margin
    clears ``POWER_FACTOR`` times VPT-Deep's seed std (the study's power to tell variants
    apart)."""
    heads, baseline = study.heads_only, study.baseline
    lines = [f'| schedule | what it changes | runs on | {heads} | {baseline} | '
             f'Δ {baseline} − {heads} (paired) | Δ / std({baseline}) | '
             f'≥ {POWER_FACTOR:g}× std? |',
             '|---|---|---|---|---|---|---|---|']
    for schedule, device, runs in ((s, device, by_variant(records)) for s in study.schedules
                                   for device, records in schedule_groups.get(s.name, [])):
        if heads not in runs and baseline not in runs:
            continue
        # A schedule piloted on one side only is still part of the search: shown, no verdict.
        scores = {variant: [r['mIoU'] for r in runs.get(variant, {}).values()]
                  for variant in (heads, baseline)}
        cells = [f'{fmt(*mean_std(values))} (n={len(values)})' if values else '–'
                 for values in scores.values()]
        ratio, difference = math.nan, '–'
        if heads in runs and baseline in runs:
            _, base_std = mean_std(scores[baseline])
            delta, delta_std, _ = paired_difference(runs, baseline, heads)
            difference = signed(delta, delta_std)
            ratio = delta / base_std if base_std and not math.isnan(base_std) else math.nan
        verdict = '–' if math.isnan(ratio) else ('**yes**' if ratio >= POWER_FACTOR else 'no')
        main = ' (main)' if schedule.name == study.main_schedule else ''
        lines.append(
            f'| {schedule.name}{main} | {schedule.description or "the configs as written"} | '
            f'{device_name(device)} | {cells[0]} | {cells[1]} | {difference} | '
            f'{"–" if math.isnan(ratio) else f"{ratio:.1f}"} | {verdict} |')
    return '\n'.join(lines)


# ------------------------------------------------------------------------------ report
def render_report(study: Study, records_by_schedule: Dict[str, List[dict]],
                  report_path: str, plot_dir: str) -> Dict[str, str]:
    """Writes the study's generated blocks into ``report_path`` and the plots; returns every
    block it can render (the report holds those of ``study.blocks``).
    ``records_by_schedule``: every schedule's finished runs."""
    groups = {s.name: by_device(records_by_schedule.get(s.name, [])) for s in study.schedules}
    main_groups = groups[study.main_schedule]
    variants, reference, baseline = study.variants, study.reference, study.baseline
    os.makedirs(plot_dir, exist_ok=True)
    miou_png = osp.join(plot_dir, 'miou.png')
    curves_png = osp.join(plot_dir, 'curves.png')
    # A plot pools each variant's seeds: it draws the device with the most runs.
    plotted = by_variant(main_groups[0][1]) if main_groups else {}
    plot_miou(plotted, variants, baseline, miou_png, study.dataset)
    plot_curves(plotted, variants, study.curve_variants, curves_png)
    rel = lambda p: osp.relpath(p, osp.dirname(report_path))  # noqa: E731
    main_names = [v.name for v in variants if v.group == 'main']
    everything = [(s.name, r) for s in study.schedules
                  for r in records_by_schedule.get(s.name, [])]
    configs = main_schedule_configs(study)
    blocks = {
        'power': power_table(groups, study),
        'main': '\n\n'.join(filter(None, [
            devices_line(study.main_schedule, main_groups),
            per_device(main_groups, lambda runs: main_table(runs, variants, baseline,
                                                            configs=configs))])),
        'contrasts': per_device(main_groups, lambda runs: contrast_table(runs,
                                                                         study.contrasts)),
        'ablation': per_device(main_groups, lambda runs: ablation_table(runs, variants,
                                                                        reference, baseline)),
        'training': per_device(main_groups, lambda runs: training_table(runs, variants)),
        'per-class': per_device(main_groups, lambda runs: per_class_table(runs, variants,
                                                                          main_names)),
        'plots': (f'Runs on {_the(main_groups[0][0])} only.\n\n' if len(main_groups) > 1
                  else '') + f'![val mIoU per variant]({rel(miou_png)})\n\n'
                             f'![training curves]({rel(curves_png)})',
        'runs': runs_table(everything),
    }
    for schedule in study.schedules:
        if schedule.block == 'length':
            blocks['length'] = length_table(study, groups, schedule)
        elif schedule.block:
            extra = groups[schedule.name]
            blocks[schedule.block] = '\n\n'.join([
                devices_line(schedule.name, extra),
                per_device(extra, lambda runs: main_table(runs, variants, baseline,
                                                          names=list(runs)))]) \
                if extra else '(no runs yet)'
    text = open(report_path).read() if osp.exists(report_path) else f'# {study.title}\n'
    for name in study.blocks:
        text = replace_block(text, name, blocks.get(name, '(no runs yet)'))
    with open(report_path, 'w') as f:
        f.write(text)
    return blocks
