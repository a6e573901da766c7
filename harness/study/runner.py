"""Runs a study (``harness.study.spec``): every (variant, seed, schedule) is trained with the
real ``tools/train.py`` and scored with the real ``tools/test.py``; each finished run leaves
one JSON (val mIoU, per-class IoU, trainable parameters, wall time, training curves, the
config diff against the reference variant, the device it trained on). Runs whose JSON
exists are skipped, so an interrupted study continues where it stopped.

``jobs`` runs go at once, each its own pair of processes with its own log (on one shared
GPU, or as that many CPU runs); a failed run is reported and the others go on.
"""
import copy
import datetime
import functools
import json
import os
import os.path as osp
import re
import shlex
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .spec import Schedule, Study, Variant

CURVE_KEYS = ('loss', 'decode.loss_ce', 'loss_prompt_token', 'loss_prompt_cls', 'lr')
DATA_ROOT_KEYS = ('train_dataloader.dataset.data_root', 'val_dataloader.dataset.data_root',
                  'test_dataloader.dataset.data_root')
PRETRAINED_KEY = 'model.backbone.init_cfg.checkpoint'
# Records written before the runner recorded the device have no `device` field. Every one of
# them was made on the 2-core CPU development machine (their commands' paths and wall times
# of 11-68 minutes per run say so; the GPU runs of issue #32 were not kept as records), so
# they count as CPU runs.
LEGACY_DEVICE = 'cpu'
UNKNOWN_DEVICE = 'unknown'


# ------------------------------------------------------------------------------- options
@functools.lru_cache(maxsize=None)
def _parsed(path: str):
    from mmengine.config import Config
    return Config.fromfile(path)


def load_config(repo: str, config: str):
    """A private copy of a config file's parse. A study's runs share a few configs, and each
    parse takes half a second or more: planning 12 runs would parse 36 times."""
    return copy.deepcopy(_parsed(osp.join(repo, config)))


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
    cfg = load_config(repo, variant.config)
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


@dataclass(frozen=True)
class PlannedRun:
    """One (variant, seed) of a schedule, with everything that reads the configs already
    worked out (:func:`plan_run`), so that running it only starts processes and reads files."""
    variant: Variant
    seed: int
    schedule: str
    work_dir: str
    options: Tuple[str, ...]  # the tools' --cfg-options
    config_diff: Dict[str, list]
    threads: Optional[int]  # None: torch's default (one per core)
    jobs: int = 1  # runs the study ran at once, this one among them

    @property
    def log(self) -> str:
        return osp.join(self.work_dir, 'study.log')


def plan_run(repo: str, study: Study, variant: Variant, schedule: Schedule, seed: int,
             data_root: Optional[str], pretrained: Optional[str], work_root: str,
             threads: Optional[int] = None, jobs: int = 1) -> PlannedRun:
    return PlannedRun(
        variant=variant, seed=seed, schedule=schedule.name,
        work_dir=osp.join(work_root, schedule.dir, variant.name, f'seed{seed}'),
        options=tuple(run_options(repo, variant, schedule, seed, data_root, pretrained)),
        config_diff=config_diff(repo, study, variant), threads=threads, jobs=jobs)


def execute_run(repo: str, plan: PlannedRun) -> dict:
    """Runs `tools/train.py`, then `tools/test.py` on its checkpoint, both writing into the
    run's own log; returns the run's record. Raises `subprocess.CalledProcessError` when a
    tool fails."""
    os.makedirs(plan.work_dir, exist_ok=True)
    env = dict(os.environ)
    if plan.threads:
        env.update(OMP_NUM_THREADS=str(plan.threads), MKL_NUM_THREADS=str(plan.threads))
    python, config = sys.executable, plan.variant.config
    train = [python, 'tools/train.py', config, '--work-dir', plan.work_dir,
             '--cfg-options', *plan.options]
    started = time.time()
    with open(plan.log, 'a') as log:
        log.write(f'$ {shlex.join(train)}\n')
        log.flush()
        subprocess.run(train, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
                       check=True)
        train_seconds = time.time() - started
        checkpoint = _last_checkpoint(plan.work_dir)
        test = [python, 'tools/test.py', config, checkpoint, '--work-dir', plan.work_dir,
                '--cfg-options', *plan.options]
        log.write(f'$ {shlex.join(test)}\n')
        log.flush()
        subprocess.run(test, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
                       check=True)
    total_seconds = time.time() - started
    with open(osp.join(plan.work_dir, 'test_metrics_ss.json')) as f:
        metrics = json.load(f)
    return build_record(repo, plan, metrics, train, test, train_seconds, total_seconds)


def _last_checkpoint(work_dir: str) -> str:
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def build_record(repo: str, plan: PlannedRun, metrics: dict, train_cmd: Sequence[str],
                 test_cmd: Sequence[str], train_seconds: float, total_seconds: float) -> dict:
    variant = plan.variant
    per_class = {k[len('IoU.'):]: v for k, v in metrics.items() if k.startswith('IoU.')}
    curves, mapping_log, trainable = parse_train_log(plan.work_dir)
    iters = max(curves.get('iter', [0]) or [0])
    return dict(
        variant=variant.name,
        group=variant.group,
        description=variant.description,
        seed=plan.seed,
        config=variant.config,
        cfg_options=dict(variant.options),
        config_diff=plan.config_diff,
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
        schedule=plan.schedule,
        threads=plan.threads,
        device=training_device(plan.work_dir),
        jobs=plan.jobs,
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


def training_device(work_dir: str) -> str:
    """Where the run trained: ``'cpu'``, or the name of the GPU (``'NVIDIA H200'``).

    Read from the training attempt's own log, where mmengine writes the environment it
    found (``CUDA available: True``, then ``GPU 0,1: NAME`` per kind of GPU) before it
    builds anything; a run that is not distributed trains on GPU 0. ``'unknown'`` if the log
    says neither, which the reports keep apart from every other device."""
    attempt = training_attempt(work_dir)
    if attempt is None:
        return UNKNOWN_DEVICE
    cuda, gpus = None, {}
    with open(attempt[0], errors='replace') as f:
        for line in f:
            match = re.match(r'\s*CUDA available: (True|False)\s*$', line)
            if match and cuda is None:
                cuda = match.group(1) == 'True'
            match = re.match(r'\s*GPU ([\d,]+): (.+?)\s*$', line)
            if match:
                for index in match.group(1).split(','):
                    gpus.setdefault(index, match.group(2))
    if cuda:
        return gpus.get('0', UNKNOWN_DEVICE)
    return 'cpu' if cuda is False else UNKNOWN_DEVICE


def record_device(record: dict) -> str:
    """The device a record's run trained on; ``LEGACY_DEVICE`` for records written before
    the runner recorded it."""
    return record.get('device', LEGACY_DEVICE)


def config_diff(repo: str, study: Study, variant: Variant) -> Dict[str, list]:
    """Settings of the variant (config + options) that differ from the study's reference,
    as ``{dotted key: [reference value, variant value]}``; paths and seeds left out."""
    reference = study.variant(study.reference)
    ref = _flatten(load_config(repo, reference.config).to_dict())
    cfg = load_config(repo, variant.config)
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
              work_root: str, threads: Optional[int] = None, commit: bool = False,
              jobs: int = 1) -> int:
    """Runs the (variant, seed) pairs of ``schedule`` that have no JSON yet, ``jobs`` at a
    time; returns the number of failed runs (each is reported, the others go on)."""
    if jobs < 1:
        raise ValueError(f'jobs={jobs}: at least one run must go at a time (--jobs 1 or more)')
    if threads is None and jobs > 1:
        # Each run's torch would take one thread per core: N runs would oversubscribe the
        # machine N times over.
        threads = max(1, usable_cores() // jobs)
    results_dir = study.schedule_dir(repo, schedule)
    pending = [(study.variant(name), seed) for seed in seeds for name in variants
               if not osp.exists(result_path(results_dir, name, seed))]
    done = len(variants) * len(seeds) - len(pending)
    at_once = f', {jobs} at a time, {threads} thread(s) each' if jobs > 1 else ''
    print(f'study {study.name} ({schedule.name}): {len(pending)} runs to do, {done} already '
          f'done{at_once}', flush=True)
    # Everything that parses configs happens here, before the first run starts: a config
    # error stops the study at once, and the runs themselves only wait on processes.
    plans = [plan_run(repo, study, variant, schedule, seed, data_root, pretrained, work_root,
                      threads, jobs) for variant, seed in pending]
    started = time.time()
    outcomes: Dict[int, Tuple[Optional[dict], Optional[str]]] = {}  # by index in plans

    def attempt(index: int):
        plan = plans[index]
        _say(f'study: [{index + 1}/{len(plans)}] {plan.variant.name} seed {plan.seed} ... '
             f'(log: {plan.log})')
        try:
            return index, execute_run(repo, plan), None
        except Exception as error:  # noqa: BLE001 - one run's failure must not stop the rest
            return index, None, _failure(plan, error)

    def finish(index: int, record: Optional[dict], error: Optional[str]) -> None:
        outcomes[index] = record, error
        plan = plans[index]
        if error:
            _say(f'study: {plan.variant.name} seed {plan.seed} FAILED ({error}); see '
                 f'{plan.log}', sys.stderr)
            return
        path = write_record(results_dir, record)
        _say(f"study: {plan.variant.name} seed {plan.seed}: mIoU {record['mIoU']:.2f} "
             f"({record['wall_seconds'] / 60:.1f} min, {record['device']}) -> {path}")
        if commit:  # from this thread only: git allows one commit at a time
            where = '' if not schedule.dir else f' ({schedule.name})'
            commit_record(path, f"study: {study.dataset}{where} {record['variant']} seed "
                                f"{record['seed']}: mIoU {record['mIoU']:.2f}")

    if jobs == 1:
        for index in range(len(plans)):
            finish(*attempt(index))
    else:
        # Threads, not processes: each run is already its own tools' processes, and a thread
        # only waits on them.
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(attempt, index) for index in range(len(plans))]
            for future in as_completed(futures):
                finish(*future.result())
    if plans:
        print(run_summary(study, schedule, plans, outcomes, time.time() - started),
              flush=True)
    return sum(1 for _, error in outcomes.values() if error)


def usable_cores() -> int:
    """The cores this process may run on (a container's share, where os.cpu_count() sees
    the whole host)."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_SAY = threading.Lock()


def _say(line: str, stream=None) -> None:
    """One whole line, even when several runs' threads report at once (print() writes the
    text and its newline separately)."""
    stream = stream or sys.stdout
    with _SAY:
        stream.write(line + '\n')
        stream.flush()


def _failure(plan: PlannedRun, error: Exception) -> str:
    """One line for the summary; a failure that is not a tool's exit status (a missing
    checkpoint or metrics file) also leaves its traceback in the run's log."""
    if isinstance(error, subprocess.CalledProcessError):
        return f'{error.cmd[1]} exited with status {error.returncode}'
    os.makedirs(plan.work_dir, exist_ok=True)
    with open(plan.log, 'a') as log:
        log.write(traceback.format_exc())
    return f'{type(error).__name__}: {error}'


def run_summary(study: Study, schedule: Schedule, plans: Sequence[PlannedRun],
                outcomes: Dict[int, tuple], seconds: float) -> str:
    """Every run of one ``run_study`` call, in the order they were planned: its mIoU and
    minutes, or why it failed and where its log is (``outcomes``: (record, error) by the
    run's index in ``plans``)."""
    failed = sum(1 for record, error in outcomes.values() if error)
    lines = [f'study {study.name} ({schedule.name}): {len(plans)} runs in '
             f'{seconds / 60:.1f} min, {len(plans) - failed} finished, {failed} failed']
    width = max(len(plan.variant.name) for plan in plans)
    for index, plan in enumerate(plans):
        record, error = outcomes[index]
        what = f'FAILED: {error}; log {plan.log}' if error else \
            f"mIoU {record['mIoU']:6.2f}  {record['wall_seconds'] / 60:5.1f} min  " \
            f"{record['device']}"
        lines.append(f'  {plan.variant.name:{width}s}  seed {plan.seed}  {what}')
    return '\n'.join(lines)
