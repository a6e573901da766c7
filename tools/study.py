"""Seeded real-data studies: train and test every variant and seed with the real tools, then
render the report's tables and plots from the per-run JSONs.

A study is a file under configs/studies/ (camvid, ccp, ...); harness/study/spec.py says what
it holds, harness/study/runner.py how runs are made and recorded.

    python tools/study.py camvid list
    python tools/study.py camvid run --data-root ../shared/realdata/camvid \\
        --pretrained ../shared/realdata/dinov2_vits14.safetensors \\
        --variants vpt-deep davpt --seeds 0 1 2 [--schedule confirm600] [--jobs 2] [--commit]
    python tools/study.py camvid report

Studies are not part of ``make test``: one CPU run takes 15 minutes or more. ``--jobs N``
runs N at once (many share one GPU well: tools/misc/gpu_study.sh).
"""
import argparse
import os
import os.path as osp
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)
from harness.entry import quiet_third_party_warnings  # noqa: E402

quiet_third_party_warnings()

DEFAULT_SEEDS = [0, 1, 2]


def command_run(study, args) -> int:
    from harness.study.runner import run_study
    if args.jobs < 1:
        sys.exit(f'error: --jobs {args.jobs}: give 1 or more runs at a time')
    schedule = study.schedule(args.schedule)
    data_root = args.data_root or study.data_root
    pretrained = args.pretrained or study.pretrained
    for path, what in ((data_root, '--data-root'), (pretrained, '--pretrained')):
        if path and not osp.exists(path):
            sys.exit(f'error: {what} {path!r} does not exist')
    unknown = [name for name in args.variants or [] if name not in
               [v.name for v in study.variants]]
    if unknown:
        sys.exit(f'error: {unknown} are not variants of {study.name} '
                 f'({[v.name for v in study.variants]})')
    variants = args.variants or list(schedule.variants) or [v.name for v in study.variants]
    seeds = args.seeds or list(schedule.seeds) or DEFAULT_SEEDS
    failures = run_study(
        REPO, study, variants, seeds, schedule,
        osp.abspath(data_root) if data_root else None,
        osp.abspath(pretrained) if pretrained else None,
        osp.abspath(args.work_root or study.work_root), args.threads, args.commit, args.jobs)
    return 1 if failures else 0


def command_list(study, args) -> int:
    from harness.study.report import device_name
    from harness.study.runner import load_records, record_device
    for schedule in study.schedules:
        records = load_records(study.schedule_dir(REPO, schedule))
        main = ' (main)' if schedule.name == study.main_schedule else ''
        print(f'schedule {schedule.name}{main}: {schedule.description}')
        for variant in study.variants:
            runs = [r for r in records if r['variant'] == variant.name]
            seeds = sorted(r['seed'] for r in runs)
            devices = sorted({device_name(record_device(r)) for r in runs})
            if seeds or schedule.name == study.main_schedule or \
                    variant.name in schedule.variants:
                where = f' on {", ".join(devices)}' if devices else ''
                print(f'  {variant.name:20s} {variant.group:20s} seeds done: {seeds or "-"}'
                      f'{where}  {variant.description}')
    return 0


def command_report(study, args) -> int:
    from harness.study.report import render_report
    from harness.study.runner import load_records
    records = {s.name: load_records(study.schedule_dir(REPO, s)) for s in study.schedules}
    if not any(records.values()):
        sys.exit(f'error: no finished runs under {study.results_dir}; run '
                 f'`tools/study.py {study.name} run` first')
    report = osp.join(REPO, args.report or study.report)
    render_report(study, records, report, osp.join(REPO, study.results_dir, 'plots'))
    counts = ', '.join(f'{name}: {len(rs)}' for name, rs in records.items())
    print(f'study {study.name}: runs per schedule {counts} -> {report}')
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('study', help='a study name (configs/studies/NAME.py) or file')
    sub = parser.add_subparsers(dest='command', required=True)
    run = sub.add_parser('run', help='train and test the (variant, seed) runs not done yet')
    run.add_argument('--schedule', help="a schedule of the study (default: its main one)")
    run.add_argument('--data-root', help="the dataset (default: the study's data_root)")
    run.add_argument('--pretrained', help="the trunk's weights (default: the study's)")
    run.add_argument('--variants', nargs='+',
                     help="default: the schedule's variants, or every variant")
    run.add_argument('--seeds', nargs='+', type=int,
                     help=f"default: the schedule's seeds, or {DEFAULT_SEEDS}")
    run.add_argument('--jobs', type=int, default=1,
                     help='runs at once, each its own processes and log (default: 1)')
    run.add_argument('--threads', type=int, default=None,
                     help='OMP/MKL threads of each run (default: torch decides; with '
                          '--jobs N, cores / N)')
    run.add_argument('--work-root', help="default: the study's work_root")
    run.add_argument('--commit', action='store_true',
                     help='git-commit each finished run\'s JSON as it lands')
    sub.add_parser('list', help='the variants and the seeds done, per schedule')
    report = sub.add_parser('report', help='render the tables and plots')
    report.add_argument('--report', help="default: the study's report file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from harness.study.spec import StudyError, load_study
    os.chdir(REPO)
    try:
        study = load_study(args.study, REPO)
        return {'run': command_run, 'list': command_list, 'report': command_report}[
            args.command](study, args)
    except StudyError as error:  # a bad study file, or a --schedule it does not have
        sys.exit(f'error: {error}')


if __name__ == '__main__':
    sys.exit(main())
