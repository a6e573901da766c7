"""Every file under configs/ builds and runs under the default set-up (mmcv-lite).

configs/ holds three kinds of file:

- model configs: each runs here (built through mmseg's registry, then one training forward
  and one prediction on a batch of two 32x32 images), or is named in ``COVERED_ELSEWHERE``
  with the test that builds and runs it. A config of a pretrained trunk runs at the tiny
  trunk's width (``tests.helpers.tiny_width_model``: its depth, prompt layout, heads and
  class count as written); a config of a random trunk (the demo's) runs as written.
  ``compile_regions`` runs torch.compile's graph capture with the eager backend.
- study files (``configs/studies/``, harness/study/spec.py): not model configs. Every model
  a study can train (a variant's config + its options + a schedule's options, as
  tools/study.py passes them to tools/train.py) runs here the same way.
- fragments (``configs/_base_/``, ``configs/studies/_*.py``): never built alone; each must
  be inherited, through ``_base_``, by a file that is.

So a new config is run here unless it is listed as covered elsewhere, and a listed config
must be one its test names.
"""
import ast
import copy
import functools
import glob
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.model import revert_sync_batchnorm
from mmseg.registry import MODELS

from harness.study.spec import load_study
from tests.helpers import ROOT, make_data_samples, tiny_width_model
from tests.test_configs import test_vit_large_config as vit_large

SIZE = 32  # the input's height and width: 4x4 tokens in the tiny trunk
# Model configs another test builds and runs, with that test: the ViT-L configs at their full
# size, one training step each (too heavy to build twice; that test keeps the build cheap).
COVERED_ELSEWHERE = {
    f'configs/{name}.py': (vit_large, 'test_vit_large_config_builds_and_steps')
    for name in vit_large.EXPECTED}


def _config_files():
    return sorted(osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'configs', '**', '*'),
                                                          recursive=True) if osp.isfile(p))


def _is_fragment(path: str) -> bool:
    return path.startswith('configs/_base_/') or (
        path.startswith('configs/studies/') and osp.basename(path).startswith('_'))


def _is_study(path: str) -> bool:
    return path.startswith('configs/studies/') and not _is_fragment(path)


MODEL_CONFIGS = [p for p in _config_files() if not _is_fragment(p) and not _is_study(p)]
RUN_HERE = [p for p in MODEL_CONFIGS if p not in COVERED_ELSEWHERE]
STUDIES = [osp.splitext(osp.basename(p))[0] for p in _config_files() if _is_study(p)]


@functools.lru_cache(maxsize=None)
def _parsed(path: str) -> Config:
    return Config.fromfile(osp.join(ROOT, path))


def parse(path: str) -> Config:
    """A private copy of a config's parse: the study variants share a few configs, and each
    parse costs a quarter of a second."""
    return copy.deepcopy(_parsed(path))


def _bases(path: str):
    """The files ``path`` names in ``_base_`` (the ones inside the repository)."""
    for node in ast.parse(open(osp.join(ROOT, path)).read()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == '_base_'
                                                for t in node.targets):
            bases = ast.literal_eval(node.value)
            for base in [bases] if isinstance(bases, str) else bases:
                if '::' not in base:  # `mmseg::...`: mmseg's own configs
                    yield osp.normpath(osp.join(osp.dirname(path), base))


def run_model(model_cfg: dict, where: str) -> None:
    """Builds ``model_cfg`` (at the tiny width if its trunk is a pretrained one), then runs a
    training forward and a prediction on two images, checking what each returns."""
    model_cfg = copy.deepcopy(model_cfg)
    if model_cfg['backbone'].get('init_cfg') is not None:
        model_cfg = tiny_width_model(model_cfg, num_classes=None)
    compile_regions = model_cfg.get('compile_regions')
    if compile_regions:
        # torch.compile's capture of the regions, without inductor's code generation for
        # this CPU (half a minute per config, and not what a GPU would run).
        model_cfg['compile_regions'] = dict(
            compile_regions if isinstance(compile_regions, dict) else {}, backend='eager')
    # ConfigDict: mmseg reads train_cfg / test_cfg by attribute.
    model = revert_sync_batchnorm(MODELS.build(ConfigDict(model_cfg)))
    classes = model.decode_head.num_classes
    inputs = torch.randn(2, 3, SIZE, SIZE)
    samples = make_data_samples(torch.randint(0, classes, (2, SIZE, SIZE)))

    model.train()
    losses = model(inputs, samples, mode='loss')
    assert 'decode.loss_ce' in losses, f'{where}: {sorted(losses)}'
    for name in ('loss_prompt_token', 'loss_prompt_cls'):
        assert (name in losses) == (model_cfg.get(name) is not None), f'{where}: {name}'
    for name, value in losses.items():
        if 'loss' in name:
            assert torch.isfinite(value).all(), f'{where}: {name} = {value}'

    model.eval()
    with torch.no_grad():
        predictions = model(inputs, samples, mode='predict')
    assert len(predictions) == 2, where
    for prediction in predictions:
        logits = prediction.seg_logits.data
        assert logits.shape == (classes, SIZE, SIZE), f'{where}: {tuple(logits.shape)}'
        assert torch.isfinite(logits).all(), where
        assert prediction.pred_sem_seg.data.shape == (1, SIZE, SIZE), where


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    """The tiny models' tensors are too small to share between threads: a second one only
    adds synchronisation, which on a busy machine (the suite beside other work) makes each
    model 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_config_file_is_run_here_or_by_the_test_named_for_it():
    files = _config_files()
    stale = sorted(set(COVERED_ELSEWHERE) - set(MODEL_CONFIGS))
    assert not stale, f'COVERED_ELSEWHERE names configs that are not model configs: {stale}'
    for config, (module, test) in COVERED_ELSEWHERE.items():
        function = getattr(module, test)
        (names, ) = [m.args[1] for m in function.pytestmark if m.name == 'parametrize']
        stem = osp.splitext(osp.basename(config))[0]
        assert stem in names, f'{config}: {module.__name__}.{test} does not run it'
    inherited = {base for path in files if not _is_fragment(path) for base in _bases(path)}
    frontier = set(inherited)
    while frontier:  # fragments inherit fragments
        frontier = {base for path in frontier if osp.isfile(osp.join(ROOT, path))
                    for base in _bases(path)} - inherited
        inherited |= frontier
    orphans = [p for p in files if _is_fragment(p) and p not in inherited]
    assert not orphans, f'fragments no config inherits (so no test builds them): {orphans}'
    assert STUDIES and RUN_HERE  # the enumeration found the folders


@pytest.mark.parametrize('config', RUN_HERE)
def test_config_builds_and_runs(config):
    run_model(parse(config).model.to_dict(), config)


def _study_models(name: str):
    """[(model config, the variants x schedules that train it)], one entry per model."""
    study = load_study(name, ROOT)
    models = {}
    for variant in study.variants:
        for schedule in study.schedules:
            cfg = parse(variant.config)
            cfg.merge_from_dict(dict(variant.options))
            # A schedule's `iters` rescales the loop and the lr schedule only.
            cfg.merge_from_dict(dict(schedule.options))
            model = cfg.model.to_dict()
            # Most variant x schedule pairs differ from another in the optimiser alone.
            entry = models.setdefault(json.dumps(model, sort_keys=True, default=repr),
                                      (model, []))
            entry[1].append(f'{variant.name} x {schedule.name}')
    return list(models.values())


@pytest.mark.parametrize('name', STUDIES)
def test_every_model_a_study_trains_builds_and_runs(name):
    for model, trained_by in _study_models(name):
        where = f'study {name}, the model of variant x schedule {trained_by}'
        try:
            run_model(model, where)
        except Exception as error:  # one test runs them all: name the failing one
            raise AssertionError(f'{where}: {type(error).__name__}: {error}') from error
