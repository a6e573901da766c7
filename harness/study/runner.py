"""Runs a study (``harness.study.spec``): every (variant, seed, schedule) is trained with the
real ``tools/train.py`` and scored with the real ``tools/test.py``; each finished run leaves
one JSON (val mIoU, per-class IoU, trainable parameters, wall time, training curves, the
config diff against the reference variant). Runs whose JSON exists are skipped, so an
interrupted study continues where it stopped.
"""
import datetime
import json
import os
import os.path as osp
import re
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from .spec import Schedule, Study, Variant

CURVE_KEYS = ('loss', 'decode.loss_ce', 'loss_prompt_token', 'loss_prompt_cls', 'lr')
DATA_ROOT_KEYS = ('train_dataloader.dataset.data_root', 'val_dataloader.dataset.data_root',
                  'test_dataloader.dataset.data_root')
PRETRAINED_KEY = 'model.backbone.init_cfg.checkpoint'


# ------------------------------------------------------------------------------- options
def format_option(key: str, value) -> str:
    """One ``--cfg-options`` item in the syntax mmengine's DictAction parses back."""
    def literal(v):
        if isinstance(v, (list, tuple)):
            inner = ','.join(literal(x) for x in v)
            return f'({inner},)' if isinstance(v, tuple) and len(v) == 1 else \
                (f'({inner})' if isinstance(v, tuple) else f'[{inner}]')
        return str(v)
    return f'{key}={literal(value)}'


def run_options(repo: str, variant: Variant, schedule: Schedule, seed: int,
                data_root: Optional[str], pretrained: Optional[str]) -> List[str]:
    options = {key: data_root for key in DATA_ROOT_KEYS} if data_root else {}
    if pretrained:
        options[PRETRAINED_KEY] = pretrained
    options.update({
        'randomness.seed': seed,
        # tools/test.py scores the final checkpoint on the same split: no second pass
        # (mmengine validates at the last iteration whatever the interval).
        'val_cfg': None, 'val_dataloader': None, 'val_evaluator': None,
    })
    options.update(variant.options)
    options.update(schedule.options)
    if schedule.iters is not None:
        options.update(schedule_options(repo, variant, schedule.iters))
    return [format_option(k, v) for k, v in options.items()]


def schedule_options(repo: str, variant: Variant, max_iters: int) -> Dict[str, object]:
    """A shorter (or longer) schedule: iterations, checkpoint, and every lr scheduler's
    begin/end scaled alike (so warm-up keeps its share of the run)."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(repo, variant.config))
    configured = cfg.train_cfg.max_iters

    def scaled(point: int) -> int:
        if point <= 0 or point >= configured:
            return 0 if point <= 0 else max_iters
        return min(max(round(point * max_iters / configured), 1), max_iters - 1)

    options = {'train_cfg.max_iters': max_iters, 'train_cfg.val_interval': max_iters,
               'default_hooks.checkpoint.interval': max_iters}
    for index, scheduler in enumerate(cfg.param_scheduler):
        for key in ('begin', 'end'):
            if key in scheduler:
                options[f'param_scheduler.{index}.{key}'] = scaled(scheduler[key])
    return options


# ----------------------------------------------------------------------------------- runs
def result_path(results_dir: str, variant: str, seed: int) -> str:
    return osp.join(results_dir, variant, f'seed{seed}.json')


def run_one(repo: str, study: Study, variant: Variant, schedule: Schedule, seed: int,
            data_root: Optional[str], pretrained: Optional[str], work_root: str,
            threads: Optional[int] = None) -> dict:
    """Trains and tests one (variant, seed) with the real tools; returns its record."""
    work_dir = osp.join(work_root, schedule.dir, variant.name, f'seed{seed}')
    os.makedirs(work_dir, exist_ok=True)
    options = run_options(repo, variant, schedule, seed, data_root, pretrained)
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    python = sys.executable
    train = [python, 'tools/train.py', variant.config, '--work-dir', work_dir,
             '--cfg-options', *options]
    log_path = osp.join(work_dir, 'study.log')
    started = time.time()
    with open(log_path, 'a') as log:
        log.write(f'$ {shlex.join(train)}\n')
        log.flush()
        subprocess.run(train, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
                       check=True)
        train_seconds = time.time() - started
        checkpoint = _last_checkpoint(work_dir)
        test = [python, 'tools/test.py', variant.config, checkpoint, '--work-dir', work_dir,
                '--cfg-options', *options]
        log.write(f'$ {shlex.join(test)}\n')
        log.flush()
        subprocess.run(test, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
                       check=True)
    total_seconds = time.time() - started
    with open(osp.join(work_dir, 'test_metrics_ss.json')) as f:
        metrics = json.load(f)
    record = build_record(repo, study, variant, seed, work_dir, metrics, train, test,
                          train_seconds, total_seconds)
    record['schedule'] = schedule.name
    record['threads'] = threads  # None: torch's default (one per core)
    return record


def _last_checkpoint(work_dir: str) -> str:
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def build_record(repo: str, study: Study, variant: Variant, seed: int, work_dir: str,
                 metrics: dict, train_cmd: Sequence[str], test_cmd: Sequence[str],
                 train_seconds: float, total_seconds: float) -> dict:
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
        config_diff=config_diff(repo, study, variant),
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
        git_commit=_git_commit(repo),
        finished=datetime.datetime.now().isoformat(timespec='seconds'),
    )


def _relative_command(cmd: Sequence[str]) -> str:
    return shlex.join(['python'] + list(cmd[1:]))


def _git_commit(repo: str) -> Optional[str]:
    try:
        return subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=repo, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def parse_train_log(work_dir: str):
    """Training curves (mmengine's scalars.json), mapping updates and the trainable count,
    all read from the training attempt that wrote the checkpoint (see `training_attempt`)."""
    curves: Dict[str, list] = {'iter': []}
    mapping, trainable = [], None
    attempt = training_attempt(work_dir)
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
            # The hook's name before and after davpt-seg 0.2 (old work dirs re-read).
            match = re.search(r'(?:SemanticMappingHook|ClassPromptMappingHook): (initial '
                              r'mapping|update at iteration \d+): .*?cluster sizes '
                              r'(\[[\d, ]*\])', line)
            if match:
                mapping.append(f'{match.group(1)}: {match.group(2)}')
            match = re.search(r'trainable parameters: ([\d,]+) of', line)
            if match and trainable is None:
                trainable = int(match.group(1).replace(',', ''))
    return curves, mapping, trainable


def training_attempt(work_dir: str) -> Optional[tuple]:
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


def config_diff(repo: str, study: Study, variant: Variant) -> Dict[str, list]:
    """Settings of the variant (config + options) that differ from the study's reference,
    as ``{dotted key: [reference value, variant value]}``; paths and seeds left out."""
    from mmengine.config import Config
    reference = study.variant(study.reference)
    ref = _flatten(Config.fromfile(osp.join(repo, reference.config)).to_dict())
    cfg = Config.fromfile(osp.join(repo, variant.config))
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


def commit_record(path: str, message: str) -> None:
    """Commits one finished run's JSON (only that file) in the repository holding it, so a
    later session resumes; a failed commit is reported, never fatal."""
    folder, name = osp.dirname(osp.abspath(path)), osp.basename(path)
    try:
        subprocess.run(['git', 'add', name], cwd=folder, check=True, capture_output=True)
        subprocess.run(['git', 'commit', '-q', '-m', message, '--', name], cwd=folder,
                       check=True, capture_output=True)
    except subprocess.CalledProcessError as error:
        print(f'study: could not commit {path}: {error.stderr.decode(errors="replace")}'
              ' (commit it by hand)', file=sys.stderr)


def load_records(results_dir: str) -> List[dict]:
    """The finished runs directly under ``results_dir`` (``<variant>/seed<S>.json``)."""
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


def run_study(repo: str, study: Study, variants: Sequence[str], seeds: Sequence[int],
              schedule: Schedule, data_root: Optional[str], pretrained: Optional[str],
              work_root: str, threads: Optional[int] = None, commit: bool = False) -> int:
    """Runs the (variant, seed) pairs of ``schedule`` that have no JSON yet; returns the
    number of failed runs (each is reported, the others go on)."""
    results_dir = study.schedule_dir(repo, schedule)
    pending = [(study.variant(name), seed) for seed in seeds for name in variants
               if not osp.exists(result_path(results_dir, name, seed))]
    done = len(variants) * len(seeds) - len(pending)
    print(f'study {study.name} ({schedule.name}): {len(pending)} runs to do, {done} already '
          'done', flush=True)
    failures = 0
    for index, (variant, seed) in enumerate(pending, 1):
        print(f'study: [{index}/{len(pending)}] {variant.name} seed {seed} ...', flush=True)
        try:
            record = run_one(repo, study, variant, schedule, seed, data_root, pretrained,
                             work_root, threads)
        except subprocess.CalledProcessError as error:
            failures += 1
            log = osp.join(work_root, schedule.dir, variant.name, f'seed{seed}', 'study.log')
            print(f'study: {variant.name} seed {seed} FAILED ({error}); see {log}',
                  file=sys.stderr, flush=True)
            continue
        path = write_record(results_dir, record)
        print(f"study: {variant.name} seed {seed}: mIoU {record['mIoU']:.2f} "
              f"({record['wall_seconds'] / 60:.1f} min) -> {path}", flush=True)
        if commit:
            where = '' if not schedule.dir else f' ({schedule.name})'
            commit_record(path, f"study: {study.dataset}{where} {record['variant']} seed "
                                f"{record['seed']}: mIoU {record['mIoU']:.2f}")
    return failures
