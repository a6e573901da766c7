"""A study is data: one file under ``configs/studies/`` names its dataset, its variants (a
config plus ``--cfg-options``), its schedules, its report and its results folder.

``tools/study.py camvid run`` and ``tools/study.py ccp run`` are the same runner on two such
files; a third study needs a third file, no code. The file is an mmengine config (Python,
JSON or YAML) with these fields::

    name            short name (the file's stem by default); the commit messages use it
    dataset         how tables and plots name the dataset ('CamVid')
    title           the report's first heading, used when the report does not exist yet
    config_dir      folder of the variants' configs (their ``config`` is relative to it)
    results_dir     where each run leaves <variant>/seed<S>.json (relative to the repo)
    report          the markdown report whose generated blocks ``report`` replaces
    work_root       where the runs' work dirs go
    data_root       the dataset's default location (``run --data-root`` overrides it)
    pretrained      the trunk weights' default location, or None for configs without
    reference       the variant the ablations change one switch of
    baseline        the variant every Δ is paired against (VPT-Deep)
    heads_only      the variant that trains the heads only (the power check), or None
    variants        list of dict(name, config, group, description, options=dict())
    schedules       list of dict(name, dir='', iters=None, options=dict(), block=None,
                    description='', variants=(), seeds=()): the schedule's runs live in
                    results_dir/dir; ``iters`` rescales the config's iterations and lr
                    schedule; ``block`` names a report block that tabulates its runs
                    ('length': beside the main schedule's); ``variants`` and ``seeds``,
                    the runs it is for (what ``run --schedule NAME`` runs by default)
    main_schedule   the schedule of the main table, the ablations and the per-class IoU
    curve_variants  the variants drawn in the training-curve plot
    blocks          the generated blocks of the report, in order
    final_configs   {variant: config file} of the recommended variants, or {}
    contrasts       list of dict(variant, against, question): paired differences beyond
                    the ones against ``baseline`` and ``reference`` that the study asks
                    for (a variant against its control), tabulated in block 'contrasts'

``options`` are nested dicts (``dict(model=dict(detach_data=True))``), passed to the tools
as mmengine ``--cfg-options`` (``model.detach_data=True``). Names starting with ``_`` are
the file's own helpers (an option dict several variants share), not fields. Fields several
studies share live in a file of ``configs/studies/`` whose name starts with ``_``, which the
study files inherit with mmengine's ``_base_``; such a file is not a study.
"""
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

STUDY_DIR = 'configs/studies'
# Every generated block the report renderer knows.
KNOWN_BLOCKS = ('power', 'main', 'contrasts', 'ablation', 'training', 'confirmation',
                'length', 'per-class', 'plots', 'runs')
# Blocks that tabulate one schedule's runs: a study has them where a schedule names them.
SCHEDULE_BLOCKS = ('confirmation', 'length')
_REQUIRED = ('dataset', 'config_dir', 'results_dir', 'report', 'reference', 'baseline',
             'variants')
_OPTIONAL = dict(name=None, title=None, work_root=None, data_root=None, pretrained=None,
                 heads_only=None, schedules=None, main_schedule=None, curve_variants=None,
                 blocks=None, final_configs=None, contrasts=None)


class StudyError(ValueError):
    """A study file that cannot be run: the message names the file and the fix."""


@dataclass(frozen=True)
class Variant:
    """One arm of the study: a config plus the settings that differ from it."""
    name: str
    config: str  # relative to the repository
    group: str  # 'main' or the switch an ablation varies
    description: str
    options: Dict[str, object] = field(default_factory=dict)  # flat, dotted keys


@dataclass(frozen=True)
class Schedule:
    """A training schedule the variants run under; each has its own results folder."""
    name: str
    dir: str = ''  # relative to the study's results_dir
    iters: Optional[int] = None  # None: the configs' own
    options: Dict[str, object] = field(default_factory=dict)  # flat, dotted keys
    block: Optional[str] = None  # a report block that tabulates this schedule's runs
    description: str = ''
    variants: Tuple[str, ...] = ()  # the runs it is for; () = every variant
    seeds: Tuple[int, ...] = ()  # () = the runner's default


@dataclass(frozen=True)
class Contrast:
    """A paired difference the study asks for: ``variant`` − ``against``, seed by seed."""
    variant: str
    against: str
    question: str


@dataclass
class Study:
    name: str
    dataset: str
    title: str
    config_dir: str
    results_dir: str
    report: str
    work_root: str
    data_root: Optional[str]
    pretrained: Optional[str]
    reference: str
    baseline: str
    heads_only: Optional[str]
    variants: List[Variant]
    schedules: List[Schedule]
    main_schedule: str
    curve_variants: List[str]
    blocks: List[str]
    final_configs: Dict[str, str]
    contrasts: List[Contrast] = field(default_factory=list)
    source: str = ''

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise StudyError(f'{self.source}: no variant {name!r} (variants: '
                         f'{[v.name for v in self.variants]})')

    def schedule(self, name: Optional[str] = None) -> Schedule:
        name = name or self.main_schedule
        for schedule in self.schedules:
            if schedule.name == name:
                return schedule
        raise StudyError(f'{self.source}: no schedule {name!r} (schedules: '
                         f'{[s.name for s in self.schedules]})')

    def schedule_dir(self, repo: str, schedule: Schedule) -> str:
        return osp.join(repo, self.results_dir, schedule.dir)


def flatten_options(node, prefix: str = '') -> Dict[str, object]:
    """Nested option dicts → ``{'model.backbone.guided_blocks': (11,)}``."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    if not node and prefix:
        return {prefix[:-1]: {}}
    flat = {}
    for key, value in node.items():
        flat.update(flatten_options(value, f'{prefix}{key}.') if isinstance(value, dict) and
                    value else {f'{prefix}{key}': _plain(value)})
    return flat


def _plain(value):
    """ConfigDict / list-of-ConfigDict values as plain Python (tuples stay tuples)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def resolve_study_path(name_or_path: str, repo: str) -> str:
    """``camvid`` → ``configs/studies/camvid.py``; a path stays a path."""
    if osp.isfile(name_or_path):
        return name_or_path
    candidate = osp.join(repo, STUDY_DIR, f'{name_or_path}.py')
    if osp.isfile(candidate) and not name_or_path.startswith('_'):
        return candidate
    import glob
    known = sorted(osp.splitext(osp.basename(p))[0]  # `_*.py`: shared fields, not studies
                   for p in glob.glob(osp.join(repo, STUDY_DIR, '[!_]*.py')))
    raise StudyError(f'no study {name_or_path!r}: give a study file or one of {known} '
                     f'({STUDY_DIR}/)')


def load_study(name_or_path: str, repo: str) -> Study:
    """Reads and checks a study file; every problem is a :class:`StudyError` naming it."""
    from mmengine.config import Config
    path = resolve_study_path(name_or_path, repo)
    # Names starting with `_` are the file's own helpers (shared option dicts), not fields.
    data = {key: value for key, value in _plain(Config.fromfile(path).to_dict()).items()
            if not key.startswith('_')}
    missing = [key for key in _REQUIRED if key not in data]
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if missing or unknown:
        raise StudyError(f'study file {path}: ' + '; '.join(
            ([f'missing {missing}'] if missing else []) +
            ([f'unknown fields {unknown} (known: {list(_REQUIRED) + list(_OPTIONAL)})']
             if unknown else [])))
    fields = dict(_OPTIONAL, **data)
    name = fields['name'] or osp.splitext(osp.basename(path))[0]

    def variant(entry: dict) -> Variant:
        _check_keys(path, 'variant', entry, ('name', 'config', 'group', 'description'),
                    ('options', ))
        config = osp.join(fields['config_dir'], entry['config'])
        if not osp.isfile(osp.join(repo, config)):
            raise StudyError(f'study file {path}: variant {entry["name"]!r} names config '
                             f'{config}, which does not exist')
        return Variant(entry['name'], config, entry['group'], entry['description'],
                       flatten_options(entry.get('options') or {}))

    def schedule(entry: dict) -> Schedule:
        _check_keys(path, 'schedule', entry, ('name', ),
                    ('dir', 'iters', 'options', 'block', 'description', 'variants', 'seeds'))
        if entry.get('block') and entry['block'] not in KNOWN_BLOCKS:
            raise StudyError(f'study file {path}: schedule {entry["name"]!r} has block '
                             f'{entry["block"]!r}, not one of {KNOWN_BLOCKS}')
        return Schedule(entry['name'], entry.get('dir', ''), entry.get('iters'),
                        flatten_options(entry.get('options') or {}), entry.get('block'),
                        entry.get('description', ''), tuple(entry.get('variants') or ()),
                        tuple(entry.get('seeds') or ()))

    def contrast(entry: dict) -> Contrast:
        _check_keys(path, 'contrast', entry, ('variant', 'against', 'question'), ())
        return Contrast(entry['variant'], entry['against'], entry['question'])

    variants = [variant(entry) for entry in fields['variants']]
    contrasts = [contrast(entry) for entry in fields['contrasts'] or []]
    schedules = [schedule(entry) for entry in fields['schedules'] or [dict(name='default')]]
    study = Study(
        name=name, dataset=fields['dataset'],
        title=fields['title'] or f'Study: {fields["dataset"]}',
        config_dir=fields['config_dir'], results_dir=fields['results_dir'],
        report=fields['report'], work_root=fields['work_root'] or f'work_dirs/study/{name}',
        data_root=fields['data_root'], pretrained=fields['pretrained'],
        reference=fields['reference'], baseline=fields['baseline'],
        heads_only=fields['heads_only'], variants=variants, schedules=schedules,
        main_schedule=fields['main_schedule'] or schedules[0].name,
        curve_variants=list(fields['curve_variants'] or [v.name for v in variants
                                                          if v.group == 'main']),
        blocks=list(fields['blocks'] or [
            b for b in KNOWN_BLOCKS if (b != 'contrasts' or contrasts) and
            (b not in SCHEDULE_BLOCKS or any(s.block == b for s in schedules))]),
        final_configs=dict(fields['final_configs'] or {}), contrasts=contrasts, source=path)
    _check_study(study)
    return study


def _check_keys(path: str, what: str, entry: dict, required: Sequence[str],
                optional: Sequence[str]) -> None:
    missing = [k for k in required if k not in entry]
    unknown = sorted(set(entry) - set(required) - set(optional))
    if missing or unknown:
        raise StudyError(f'study file {path}: a {what} entry {entry!r} ' + '; '.join(
            ([f'lacks {missing}'] if missing else []) +
            ([f'has unknown keys {unknown}'] if unknown else [])))


def _check_study(study: Study) -> None:
    names = [v.name for v in study.variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise StudyError(f'study file {study.source}: variant names {duplicates} repeat')
    for role in ('reference', 'baseline', 'heads_only'):
        value = getattr(study, role)
        if value is not None and value not in names:
            raise StudyError(f'study file {study.source}: {role}={value!r} is not a variant')
    for name in list(study.curve_variants) + list(study.final_configs):
        if name not in names:
            raise StudyError(f'study file {study.source}: {name!r} (curve_variants / '
                             'final_configs) is not a variant')
    for schedule in study.schedules:
        unknown = [name for name in schedule.variants if name not in names]
        if unknown:
            raise StudyError(f'study file {study.source}: schedule {schedule.name!r} is for '
                             f'variants {unknown}, which are not variants ({names})')
    for contrast in study.contrasts:
        for name in (contrast.variant, contrast.against):
            if name not in names:
                raise StudyError(f'study file {study.source}: contrast '
                                 f'{contrast.question!r} names {name!r}, which is not a '
                                 'variant')
    unknown = [b for b in study.blocks if b not in KNOWN_BLOCKS]
    if unknown:
        raise StudyError(f'study file {study.source}: blocks {unknown} are not among '
                         f'{KNOWN_BLOCKS}')
    study.schedule(study.main_schedule)  # raises for an unknown name
