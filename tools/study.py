"""The seeded real-data study: CamVid + a frozen DINOv2 ViT-S/14 (docs/results/camvid.md).

Every (variant, seed) is trained with the real ``tools/train.py`` and scored with the real
``tools/test.py``; each finished run leaves one JSON under ``docs/results/camvid/`` (val mIoU,
per-class IoU, trainable parameters, wall time, training curves, the config diff against
the paper's DA-VPT). Runs whose JSON exists are skipped, so an interrupted study continues
where it stopped. ``report`` renders the tables and plots into ``docs/results/camvid.md``.

    python tools/study.py list
    python tools/study.py run --data-root ../shared/realdata/camvid \\
        --pretrained ../shared/realdata/dinov2_vits14.safetensors \\
        --variants vpt-deep davpt --seeds 0 1 2
    python tools/study.py report

The study is not part of ``make test``: one run takes about 15 minutes on 2 CPU cores.
"""
import argparse
import datetime
import json
import os
import os.path as osp
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = 'configs/camvid'
RESULTS_DIR = 'docs/results/camvid'
REPORT = 'docs/results/camvid.md'
WORK_ROOT = 'work_dirs/study/camvid'
NO_VALIDATION = 10**9  # an interval no run reaches
# Runs of the longer (600-iteration) schedule that confirm the main comparison live in this
# sub-folder of the results: `--results-dir docs/results/camvid/confirm600 run --iters 600`.
CONFIRMATION_DIR = 'confirm600'


def _config(mode: str) -> str:
    return f'{CONFIG_DIR}/setr_pup_dinov2-s14_{mode}_camvid.py'


@dataclass(frozen=True)
class Variant:
    """One arm of the study: a config plus the settings that differ from it."""
    name: str
    config: str
    group: str  # 'main' or the switch an ablation varies
    description: str
    options: Dict[str, object] = field(default_factory=dict)


REFERENCE = 'davpt'  # the paper's DA-VPT: ablations change one switch of it
BASELINE = 'vpt-deep'

VARIANTS: List[Variant] = [
    # ------------------------------------------------------------------ tuning modes
    Variant('linear', _config('linear'), 'main', 'heads only (frozen trunk)'),
    Variant('bias', _config('bias'), 'main', 'BitFit: every trunk bias'),
    Variant('vpt-deep', _config('vpt-deep'), 'main', 'VPT-Deep, 10 prompts per block'),
    Variant('davpt', _config('davpt'), 'main', "DA-VPT, the paper's settings"),
    Variant('davpt-plus', _config('davpt-plus'), 'main', "DA-VPT+, the paper's settings"),
    Variant('full', _config('full'), 'main', 'full fine-tuning (trunk lr x0.1)'),
    # ------------------------------------------ ablations: one switch of the paper's DA-VPT
    Variant('pa-authors', _config('davpt'), 'Proxy-Anchor scale',
            "authors' release: alpha 160, delta 0.02, positive term over all proxies",
            {'model.metric_loss.alpha': 160., 'model.metric_loss.margin': 0.02,
             'model.metric_loss.positive_average': 'all_proxies'}),
    Variant('pairing-key-query', _config('davpt'), 'embedding pairing',
            "prompt key vs patch/CLS query (the attention's own space)",
            {'model.embedding_pairing': 'key-query'}),
    Variant('pairing-input', _config('davpt'), 'embedding pairing',
            "authors' release: raw prompt vs image-mean of the block input",
            {'model.embedding_pairing': 'input', 'model.token_pooling': 'image'}),
    Variant('guided-last', _config('davpt'), 'guided block',
            'the last block (11) guided (paper figure 4a)',
            {'model.backbone.guided_blocks': (11, )}),
    Variant('guided-middle', _config('davpt'), 'guided block',
            "block 5 guided (the authors' block 11 of 24, scaled to 12 blocks)",
            {'model.backbone.guided_blocks': (5, )}),
    Variant('kmeans-cls', _config('davpt'), 'k-means input',
            'k-means over CLS tokens (paper, authors)',
            {'model.class_representation': 'cls'}),
    Variant('sgd-authors', _config('davpt-sgd'), 'optimiser',
            "authors' recipe: SGD m 0.9, lr 1e-3, wd 0, poly 0.9, head lr x10"),
    Variant('vpt-deep-sgd', _config('davpt-sgd'), 'optimiser',
            "VPT-Deep under the authors' SGD recipe (its baseline)",
            {'model.backbone.tuning_mode': 'vpt-deep', 'model.token_loss_weight': 0.,
             'model.cls_loss_weight': 0., 'custom_hooks': []}),
    Variant('detach-data', _config('davpt'), 'metric gradient',
            'patch/CLS embeddings detached: the losses move the guided prompts only',
            {'model.detach_data': True}),
    Variant('davpt-plus-detach', _config('davpt-plus'), 'metric gradient',
            'DA-VPT+ with the patch/CLS embeddings detached',
            {'model.detach_data': True}),
    Variant('no-cls-loss', _config('davpt'), 'loss weights',
            'gamma = 0: no CLS loss',
            {'model.cls_loss_weight': 0.}),
    Variant('no-token-loss', _config('davpt'), 'loss weights',
            'beta = 0: no token loss',
            {'model.token_loss_weight': 0.}),
    Variant('weights-0.01', _config('davpt'), 'loss weights',
            'beta = gamma = 0.01',
            {'model.token_loss_weight': 0.01, 'model.cls_loss_weight': 0.01}),
]
VARIANTS_BY_NAME = {v.name: v for v in VARIANTS}
# Variants the study recommends (docs/results/camvid.md, "Final configs") whose options are
# also written out as a config file, so that they rerun on other data without the runner.
FINAL_CONFIGS = {
    'detach-data': 'configs/camvid/setr_pup_dinov2-s14_davpt-detach_camvid.py',
    'davpt-plus-detach': 'configs/camvid/setr_pup_dinov2-s14_davpt-plus-detach_camvid.py',
}
if len(VARIANTS_BY_NAME) != len(VARIANTS):
    raise RuntimeError('tools/study.py: two variants share a name')


# ------------------------------------------------------------------------------- running
def format_option(key: str, value) -> str:
    """One ``--cfg-options`` item in the syntax mmengine's DictAction parses back."""
    def literal(v):
        if isinstance(v, (list, tuple)):
            inner = ','.join(literal(x) for x in v)
            return f'({inner},)' if isinstance(v, tuple) and len(v) == 1 else \
                (f'({inner})' if isinstance(v, tuple) else f'[{inner}]')
        if isinstance(v, bool):
            return str(v)
        return str(v)
    return f'{key}={literal(value)}'


def run_options(variant: Variant, seed: int, data_root: str, pretrained: str,
                max_iters: Optional[int] = None) -> List[str]:
    options = {
        'train_dataloader.dataset.data_root': data_root,
        'val_dataloader.dataset.data_root': data_root,
        'test_dataloader.dataset.data_root': data_root,
        'model.backbone.init_cfg.checkpoint': pretrained,
        'randomness.seed': seed,
        # tools/test.py scores the final checkpoint on the same split: no second pass.
        'train_cfg.val_interval': NO_VALIDATION,
    }
    options.update(variant.options)
    if max_iters is not None:
        options.update(_schedule_options(variant, max_iters))
    return [format_option(k, v) for k, v in options.items()]


def _schedule_options(variant: Variant, max_iters: int) -> Dict[str, object]:
    """A shorter (or longer) schedule: iterations, validation, checkpoint, and every lr
    scheduler's begin/end scaled alike (so warm-up keeps its share of the run)."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO, variant.config))
    configured = cfg.train_cfg.max_iters

    def scaled(point: int) -> int:
        if point <= 0 or point >= configured:
            return 0 if point <= 0 else max_iters
        return min(max(round(point * max_iters / configured), 1), max_iters - 1)

    options = {'train_cfg.max_iters': max_iters,
               'default_hooks.checkpoint.interval': max_iters}
    for index, scheduler in enumerate(cfg.param_scheduler):
        for key in ('begin', 'end'):
            if key in scheduler:
                options[f'param_scheduler.{index}.{key}'] = scaled(scheduler[key])
    return options


def result_path(results_dir: str, variant: str, seed: int) -> str:
    return osp.join(results_dir, variant, f'seed{seed}.json')


def run_one(variant: Variant, seed: int, args) -> dict:
    """Trains and tests one (variant, seed) with the real tools; returns its record."""
    work_dir = osp.join(args.work_root, variant.name, f'seed{seed}')
    os.makedirs(work_dir, exist_ok=True)
    options = run_options(variant, seed, args.data_root, args.pretrained, args.iters)
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    python = sys.executable
    train = [python, 'tools/train.py', variant.config, '--work-dir', work_dir,
             '--cfg-options', *options]
    log_path = osp.join(work_dir, 'study.log')
    started = time.time()
    with open(log_path, 'a') as log:
        log.write(f'$ {shlex.join(train)}\n')
        log.flush()
        subprocess.run(train, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                       check=True)
        train_seconds = time.time() - started
        checkpoint = _last_checkpoint(work_dir)
        test = [python, 'tools/test.py', variant.config, checkpoint, '--work-dir', work_dir,
                '--cfg-options', *options]
        log.write(f'$ {shlex.join(test)}\n')
        log.flush()
        subprocess.run(test, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                       check=True)
    total_seconds = time.time() - started
    with open(osp.join(work_dir, 'test_metrics_ss.json')) as f:
        metrics = json.load(f)
    record = build_record(variant, seed, work_dir, metrics, train, test, train_seconds,
                          total_seconds, options)
    record['threads'] = args.threads  # None: torch's default (one per core)
    return record


def _last_checkpoint(work_dir: str) -> str:
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def build_record(variant: Variant, seed: int, work_dir: str, metrics: dict,
                 train_cmd: Sequence[str], test_cmd: Sequence[str], train_seconds: float,
                 total_seconds: float, options: Sequence[str]) -> dict:
    per_class = {k[len('IoU.'):]: v for k, v in metrics.items() if k.startswith('IoU.')}
    curves, mapping_log, trainable = parse_train_log(work_dir)
    iters = max(curves.get('iter', [0]) or [0])
    return dict(
        variant=variant.name,
        group=variant.group,
        description=variant.description,
        seed=seed,
        config=variant.config,
        cfg_options=dict(variant.options),
        config_diff=config_diff(variant),
        mIoU=metrics['mIoU'],
        aAcc=metrics.get('aAcc'),
        mAcc=metrics.get('mAcc'),
        per_class_iou=per_class,
        trainable_parameters=trainable,
        iterations=iters,
        train_seconds=round(train_seconds, 1),
        wall_seconds=round(total_seconds, 1),
        curves=curves,
        mapping_updates=mapping_log,
        commands=[_relative_command(train_cmd), _relative_command(test_cmd)],
        git_commit=_git_commit(),
        finished=datetime.datetime.now().isoformat(timespec='seconds'),
    )


def _relative_command(cmd: Sequence[str]) -> str:
    return shlex.join(['python'] + list(cmd[1:]))


def _git_commit() -> Optional[str]:
    try:
        return subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


CURVE_KEYS = ('loss', 'decode.loss_ce', 'loss_prompt_token', 'loss_prompt_cls', 'lr')


def parse_train_log(work_dir: str):
    """Training curves (mmengine's scalars.json), mapping updates and the trainable count,
    all read from the training attempt that wrote the checkpoint (see `_training_attempt`)."""
    curves: Dict[str, list] = {'iter': []}
    mapping, trainable = [], None
    attempt = _training_attempt(work_dir)
    if attempt is None:
        return curves, mapping, trainable
    log, scalars = attempt
    if osp.isfile(scalars):
        with open(scalars) as f:
            for line in f:
                entry = json.loads(line)
                if 'loss' not in entry:
                    continue  # validation entries
                curves['iter'].append(entry.get('iter', entry.get('step')))
                for key in CURVE_KEYS:
                    if key in entry:
                        curves.setdefault(key, []).append(round(float(entry[key]), 5))
    with open(log, errors='replace') as f:
        for line in f:
            match = re.search(r'SemanticMappingHook: (initial mapping|update at iteration '
                              r'\d+): .*?cluster sizes (\[[\d, ]*\])', line)
            if match:
                mapping.append(f'{match.group(1)}: {match.group(2)}')
            match = re.search(r'trainable parameters: ([\d,]+) of', line)
            if match and trainable is None:
                trainable = int(match.group(1).replace(',', ''))
    return curves, mapping, trainable


def _training_attempt(work_dir: str) -> Optional[tuple]:
    """(log, scalars.json) of the newest training run in `work_dir`, or None.

    mmengine gives every start its own timestamped folder. A run that was interrupted and
    started again (or `tools/test.py`, which logs no training iteration) leaves more than
    one; the checkpoint comes from the newest one that trained, so the curves must too."""
    runs = sorted((d for d in os.listdir(work_dir) if re.fullmatch(r'\d{8}_\d{6}', d)),
                  reverse=True)
    for run in runs:
        log = osp.join(work_dir, run, f'{run}.log')
        if not osp.isfile(log):
            continue
        with open(log, errors='replace') as f:
            if any('Iter(train)' in line for line in f):
                return log, osp.join(work_dir, run, 'vis_data', 'scalars.json')
    return None


def config_diff(variant: Variant) -> Dict[str, list]:
    """Settings of the variant (config + options) that differ from the paper's DA-VPT, as
    ``{dotted key: [reference value, variant value]}``; paths and seeds left out."""
    from mmengine.config import Config
    reference = VARIANTS_BY_NAME[REFERENCE]
    ref = _flatten(Config.fromfile(osp.join(REPO, reference.config)).to_dict())
    cfg = Config.fromfile(osp.join(REPO, variant.config))
    if variant.options:
        cfg.merge_from_dict(dict(variant.options))
    ours = _flatten(cfg.to_dict())
    diff = {}
    for key in sorted(set(ref) | set(ours)):
        if ref.get(key, '<absent>') != ours.get(key, '<absent>'):
            diff[key] = [ref.get(key, '<absent>'), ours.get(key, '<absent>')]
    return diff


def _flatten(node, prefix: str = '') -> Dict[str, object]:
    flat = {}
    if isinstance(node, dict):
        for key, value in node.items():
            flat.update(_flatten(value, f'{prefix}{key}.'))
    elif isinstance(node, (list, tuple)) and any(isinstance(v, dict) for v in node):
        for index, value in enumerate(node):
            flat.update(_flatten(value, f'{prefix}{index}.'))
    else:
        value = list(node) if isinstance(node, tuple) else node
        flat[prefix[:-1]] = value
    return flat


def write_record(results_dir: str, record: dict) -> str:
    path = result_path(results_dir, record['variant'], record['seed'])
    os.makedirs(osp.dirname(path), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(record, f, indent=1, default=float)
    os.replace(tmp, path)  # a half-written JSON never counts as a finished run
    return path


def commit_record(path: str, record: dict) -> None:
    """Commits one finished run's JSON (only that file) in the repository holding it, so a
    later session resumes; a failed commit is reported, never fatal."""
    message = (f"study: CamVid {record['variant']} seed {record['seed']}: "
               f"mIoU {record['mIoU']:.2f}")
    folder, name = osp.dirname(osp.abspath(path)), osp.basename(path)
    try:
        subprocess.run(['git', 'add', name], cwd=folder, check=True, capture_output=True)
        subprocess.run(['git', 'commit', '-q', '-m', message, '--', name], cwd=folder,
                       check=True, capture_output=True)
    except subprocess.CalledProcessError as error:
        print(f'study: could not commit {path}: {error.stderr.decode(errors="replace")}'
              ' (commit it by hand)', file=sys.stderr)


# ----------------------------------------------------------------------------- commands
def command_run(args) -> int:
    for path, what in ((args.data_root, '--data-root'), (args.pretrained, '--pretrained')):
        if not osp.exists(path):
            sys.exit(f'error: {what} {path!r} does not exist')
    args.data_root, args.pretrained = osp.abspath(args.data_root), osp.abspath(args.pretrained)
    args.work_root = osp.abspath(args.work_root)
    results_dir = osp.join(REPO, args.results_dir)
    pending = [(VARIANTS_BY_NAME[name], seed) for seed in args.seeds for name in args.variants
               if not osp.exists(result_path(results_dir, name, seed))]
    done = len(args.variants) * len(args.seeds) - len(pending)
    print(f'study: {len(pending)} runs to do, {done} already done')
    failures = 0
    for index, (variant, seed) in enumerate(pending, 1):
        print(f'study: [{index}/{len(pending)}] {variant.name} seed {seed} ...', flush=True)
        try:
            record = run_one(variant, seed, args)
        except subprocess.CalledProcessError as error:
            failures += 1
            print(f'study: {variant.name} seed {seed} FAILED ({error}); see '
                  f'{osp.join(args.work_root, variant.name, f"seed{seed}", "study.log")}',
                  file=sys.stderr, flush=True)
            continue
        path = write_record(results_dir, record)
        print(f"study: {variant.name} seed {seed}: mIoU {record['mIoU']:.2f} "
              f"({record['wall_seconds'] / 60:.1f} min) -> {path}", flush=True)
        if args.commit:
            commit_record(path, record)
    return 1 if failures else 0


def command_list(args) -> int:
    results_dir = osp.join(REPO, args.results_dir)
    records = load_records(results_dir)
    for variant in VARIANTS:
        seeds = sorted(r['seed'] for r in records if r['variant'] == variant.name)
        print(f'{variant.name:20s} {variant.group:20s} seeds done: {seeds or "-"}  '
              f'{variant.description}')
    return 0


def load_records(results_dir: str) -> List[dict]:
    records = []
    if not osp.isdir(results_dir):
        return records
    for variant in sorted(os.listdir(results_dir)):
        folder = osp.join(results_dir, variant)
        if not osp.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if re.fullmatch(r'seed\d+\.json', name):
                with open(osp.join(folder, name)) as f:
                    records.append(json.load(f))
    return records


def command_report(args) -> int:
    from davpt_seg.utils.study_report import render_report
    results_dir = osp.join(REPO, args.results_dir)
    records = load_records(results_dir)
    if not records:
        sys.exit(f'error: no finished runs under {results_dir}; run `tools/study.py run` first')
    confirmation = load_records(osp.join(results_dir, CONFIRMATION_DIR))
    report = osp.join(REPO, args.report)
    render_report(records, VARIANTS, report, osp.join(results_dir, 'plots'),
                  reference=REFERENCE, baseline=BASELINE, confirmation_records=confirmation)
    print(f'study: {len(records)} runs + {len(confirmation)} confirmation runs -> {report}')
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--results-dir', default=RESULTS_DIR,
                        help='where the per-run JSONs live (relative to the repository)')
    sub = parser.add_subparsers(dest='command', required=True)
    run = sub.add_parser('run', help='train and test the (variant, seed) runs not done yet')
    run.add_argument('--data-root', default='data/camvid',
                     help='CamVid in mmseg layout (img_dir/, ann_dir/)')
    run.add_argument('--pretrained', default='pretrain/dinov2_vits14.safetensors',
                     help='DINOv2 ViT-S/14 weights (timm state dict)')
    run.add_argument('--variants', nargs='+', default=[v.name for v in VARIANTS],
                     choices=[v.name for v in VARIANTS])
    run.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    run.add_argument('--iters', type=int, default=None,
                     help="override the configs' 300 iterations (the lr schedule follows)")
    run.add_argument('--threads', type=int, default=None,
                     help='OMP/MKL threads of each run (default: torch decides)')
    run.add_argument('--work-root', default=WORK_ROOT)
    run.add_argument('--commit', action='store_true',
                     help='git-commit each finished run\'s JSON as it lands')
    sub.add_parser('list', help='the variants and the seeds done')
    report = sub.add_parser('report', help='render the tables and plots')
    report.add_argument('--report', default=REPORT)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.chdir(REPO)
    sys.path.insert(0, REPO)
    return {'run': command_run, 'list': command_list, 'report': command_report}[
        args.command](args)


if __name__ == '__main__':
    sys.exit(main())
