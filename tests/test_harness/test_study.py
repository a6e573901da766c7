"""Studies as data (configs/studies/*.py) and their runner, tools/study.py: the CamVid and CCP
studies' variants, a third, tiny study made of a file alone and run for real through
tools/train.py + tools/test.py, and the rendered reports (CamVid's re-renders unchanged)."""
import copy
import functools
import json
import math
import os
import os.path as osp
import runpy
import shutil

import numpy as np
import pytest
import torch
from mmengine.config import Config, DictAction
from PIL import Image

from harness.study import report as study_report
from harness.study.runner import (config_diff, format_option, load_records, parse_train_log,
                                  schedule_options, training_device, usable_cores)
from harness.study.spec import StudyError, load_study
from tests.helpers import ROOT

STUDY_TOOL = osp.join(ROOT, 'tools', 'study.py')


@functools.lru_cache(maxsize=None)
def _parsed(path: str) -> Config:
    return Config.fromfile(path)


def parse(path: str) -> Config:
    """A private copy of a config file's parse: the studies' variants share a few configs,
    and each parse costs about half a second."""
    return copy.deepcopy(_parsed(osp.join(ROOT, path)))


@pytest.fixture(scope='module')
def camvid():
    return load_study('camvid', ROOT)


@pytest.fixture(scope='module')
def ccp():
    return load_study('ccp', ROOT)


def test_cfg_options_survive_mmengine_parsing():
    values = {'a': (11, ), 'b': [], 'c': True, 'd': 0.02, 'e': 'all_proxies', 'f': (3, 5),
              'g': None, 'h': ()}
    parsed = {}
    for key, value in values.items():
        k, v = format_option(key, value).split('=', 1)
        parsed[k] = DictAction._parse_iterable(v)
    assert parsed == values


@pytest.mark.parametrize('name', ['camvid', 'ccp'])
def test_every_variant_option_exists_in_its_config(name):
    """A mistyped option would silently add a key that nothing reads."""
    study = load_study(name, ROOT)
    for variant in study.variants:
        cfg = parse(variant.config)
        for key in variant.options:
            node = cfg
            for part in key.split('.')[:-1]:
                node = node[part]
            assert key.split('.')[-1] in node, f'{variant.name}: {key} is not in the config'


@pytest.mark.parametrize('name', ['camvid', 'ccp'])
def test_every_variant_builds(name):
    """A variant whose settings contradict each other would fail only hours into a study.
    Every constructor and its checks run; on the meta device no weight is drawn (the
    weights' values are not what a contradiction is about)."""
    from mmseg.registry import MODELS
    study = load_study(name, ROOT)
    for variant in study.variants:
        cfg = parse(variant.config)
        cfg.merge_from_dict(dict(variant.options))
        cfg.merge_from_dict(dict(study.schedule().options))
        model_cfg = cfg.model
        model_cfg.backbone.init_cfg = None
        with torch.device('meta'):
            MODELS.build(model_cfg)


def test_config_diff_names_exactly_what_a_variant_changes(camvid):
    diff = config_diff(ROOT, camvid, camvid.variant('pa-authors'))
    assert diff == {
        f'model.{loss}.{key}': value for loss in ('loss_prompt_token', 'loss_prompt_cls')
        for key, value in (('alpha', [32., 160.]), ('margin', [0.1, 0.02]),
                           ('positive_average', ['positive_proxies', 'all_proxies']))}
    assert config_diff(ROOT, camvid, camvid.variant('davpt')) == {}
    diff = config_diff(ROOT, camvid, camvid.variant('vpt-deep'))
    assert diff['model.backbone.guided_blocks'] == [[8], []]
    assert diff['model.loss_prompt_token'][1] is None


@pytest.mark.parametrize('name', ['camvid', 'ccp'])
def test_final_configs_are_the_variants_the_study_measured(name):
    study = load_study(name, ROOT)
    for variant_name, path in study.final_configs.items():
        variant = study.variant(variant_name)
        measured = parse(variant.config)
        measured.merge_from_dict(dict(variant.options))
        schedule = study.schedule()
        for schedule_option, value in schedule.options.items():
            measured.merge_from_dict({schedule_option: value})
        if schedule.iters is not None:
            measured.merge_from_dict(schedule_options(ROOT, variant, schedule.iters))
        final = Config.fromfile(osp.join(ROOT, path)).to_dict()
        measured = measured.to_dict()
        # The schedule bases' helper variables only fill the base at parse time; mmengine
        # reads train_cfg and param_scheduler, compared below.
        for helper in ('max_iters', 'warmup_iters'):
            final.pop(helper, None), measured.pop(helper, None)
        assert final == measured, variant_name


def test_study_configs_build_their_tuning_modes(camvid):
    from mmseg.registry import MODELS
    trainable = {}
    for name in ('linear', 'bias', 'vpt-deep', 'davpt', 'davpt-plus', 'vpt-deep-kv', 'full'):
        with torch.device('meta'):  # counting needs shapes and flags, not values
            model = MODELS.build(parse(camvid.variant(name).config).model)
        trainable[name] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert model.backbone.trunk.patch_embed.patch_size == (14, 14)
        assert model.backbone.embed_dim == 384 and model.backbone.depth == 12
    assert trainable['linear'] < trainable['vpt-deep'] == trainable['davpt'] < \
        trainable['davpt-plus'] < trainable['full']
    assert trainable['linear'] < trainable['bias'] < trainable['full']
    # 10 prompts of 384 in each of the 12 blocks; DA-VPT+ adds k/v offsets (2 x 384 each).
    assert trainable['vpt-deep'] - trainable['linear'] == 12 * 10 * 384
    assert trainable['davpt-plus'] - trainable['davpt'] == 12 * 2 * 384
    # The control differs from DA-VPT+ by the guidance alone, which adds no parameter.
    assert trainable['vpt-deep-kv'] == trainable['davpt-plus']


def test_sgd_recipe_puts_the_head_at_ten_times_the_lr(camvid):
    from mmengine.optim import build_optim_wrapper
    from mmseg.registry import MODELS
    cfg = Config.fromfile(osp.join(ROOT, camvid.variant('sgd-authors').config))
    model = MODELS.build(cfg.model)
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    assert type(optimizer).__name__ == 'SGD'
    head = {id(p) for p in model.decode_head.parameters()}
    lrs = {('head' if id(p) in head else 'other', g['lr']) for g in optimizer.param_groups
           for p in g['params'] if p.requires_grad}
    assert lrs == {('head', 1e-2), ('other', 1e-3)}
    assert all(g['momentum'] == 0.9 and g['weight_decay'] == 0 for g in optimizer.param_groups)


def test_study_files_with_mistakes_are_clear_errors(tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text("dataset = 'X'\nconfig_dir = 'configs/camvid'\nresults_dir = 'r'\n"
                   "report = 'r.md'\nreference = 'a'\nbaseline = 'a'\nvariant = []\n")
    with pytest.raises(StudyError, match=r"missing \['variants'\].*unknown fields \['variant'\]"):
        load_study(str(bad), ROOT)
    bad.write_text("dataset = 'X'\nconfig_dir = 'configs/camvid'\nresults_dir = 'r'\n"
                   "report = 'r.md'\nreference = 'a'\nbaseline = 'b'\n"
                   "variants = [dict(name='a', config='nope.py', group='main', "
                   "description='')]\n")
    with pytest.raises(StudyError, match=r"names config configs/camvid/nope.py, which does "
                                         'not exist'):
        load_study(str(bad), ROOT)
    bad.write_text("dataset = 'X'\nconfig_dir = 'configs/camvid'\nresults_dir = 'r'\n"
                   "report = 'r.md'\nreference = 'a'\nbaseline = 'a'\n"
                   "variants = [dict(name='a', config='setr_pup_dinov2-s14_davpt_camvid.py', "
                   "group='main', description='')]\n"
                   "contrasts = [dict(variant='a', against='b', question='q')]\n")
    with pytest.raises(StudyError, match=r"contrast 'q' names 'b', which is not a variant"):
        load_study(str(bad), ROOT)
    bad.write_text("dataset = 'X'\nconfig_dir = 'configs/camvid'\nresults_dir = 'r'\n"
                   "report = 'r.md'\nreference = 'a'\nbaseline = 'a'\n"
                   "variants = [dict(name='a', config='setr_pup_dinov2-s14_davpt_camvid.py', "
                   "group='main', description='')]\n"
                   "schedules = [dict(name='long', iters=9, variants=['a', 'b'])]\n")
    with pytest.raises(StudyError, match=r"schedule 'long' is for variants \['b'\], which are "
                                         r"not variants \(\['a'\]\)"):
        load_study(str(bad), ROOT)
    with pytest.raises(StudyError, match=r"no study 'nosuch'.*\['camvid', 'ccp'"):
        load_study('nosuch', ROOT)
    # the studies' shared fields are inherited, not run
    with pytest.raises(StudyError, match=r"no study '_davpt_plus_contrasts'"):
        load_study('_davpt_plus_contrasts', ROOT)


# ------------------------------------------------------------ a third study, from data alone
TINY_STUDY = '''
dataset = 'Tiny'
config_dir = {config_dir!r}
results_dir = {results!r}
report = {report!r}
work_root = {work!r}
reference = 'tiny-davpt'
baseline = 'tiny-vpt'
heads_only = 'tiny-linear'
variants = [
    dict(name='tiny-linear', config='tiny_linear.py', group='main', description='heads'),
    dict(name='tiny-vpt', config='tiny_vpt.py', group='main', description='VPT-Deep'),
    dict(name='tiny-davpt', config='tiny_davpt.py', group='main', description='DA-VPT'),
    dict(name='tiny-all', config='tiny_davpt.py', group='class assignment',
         description='every class', options=dict(model=dict(class_assignment='all'))),
    dict(name='tiny-broken', config='tiny_davpt.py', group='guided block',
         description='a block the trunk lacks: the run fails',
         options=dict(model=dict(backbone=dict(guided_blocks=(7, ))))),
]
schedules = [dict(name='two', iters=2, description='2 iterations'),
             dict(name='three', dir='three', iters=3, block='confirmation')]
blocks = ['power', 'main', 'contrasts', 'ablation', 'confirmation', 'per-class', 'plots',
          'runs']
contrasts = [dict(variant='tiny-all', against='tiny-vpt', question='every class, guided')]
'''
TINY_DAVPT = '''
_base_ = [{base!r}]
crop_size = (28, 28)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=crop_size, timm_kwargs=dict(embed_dim=32, depth=4, num_heads=2),
                  out_indices=(3, ), guided_blocks=(2, ), num_prompts=2,
                  num_guided_prompts=2, num_extra_prompts=1, init_cfg=None),
    decode_head=dict(num_classes=4, in_channels=32, channels=8, num_convs=1, up_scale=2),
    background_classes=(0, ))
train_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
    dict(type='RandomCrop', crop_size=crop_size), dict(type='PackSegInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
dataset = dict(type='BaseSegDataset', img_suffix='.jpg', seg_map_suffix='.png',
               metainfo=dict(classes=('bg', 'a', 'b', 'c')))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(dataset, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader
default_hooks = dict(logger=dict(interval=1))
'''
NO_GUIDANCE = '''
_base_ = ['./tiny_davpt.py']
model = dict(backbone=dict({extra}guided_blocks=(), num_guided_prompts=None,
                           num_extra_prompts=None),
             loss_prompt_token=None, loss_prompt_cls=None)
custom_hooks = []
'''


def _write_layout(root: str, count: int = 3, size=(36, 30), seed: int = 0):
    """An mmseg-layout dataset of 4 classes in blocks (class 0 the background)."""
    rng = np.random.default_rng(seed)
    for split in ('train', 'val'):
        os.makedirs(osp.join(root, 'img_dir', split))
        os.makedirs(osp.join(root, 'ann_dir', split))
        for i in range(count):
            label = np.kron(rng.integers(0, 4, (3, 3)), np.ones((12, 12), np.uint8))
            label = label[:size[1], :size[0]].astype(np.uint8)
            image = (rng.normal(60 * label[..., None], 20, (*label.shape, 3))).clip(0, 255)
            Image.fromarray(image.astype(np.uint8)).save(
                osp.join(root, 'img_dir', split, f'{i}.jpg'))
            Image.fromarray(label).save(osp.join(root, 'ann_dir', split, f'{i}.png'))


@pytest.fixture(scope='module')
def tiny_study(tmp_path_factory):
    """A study written as data only: a folder of configs and one study file."""
    root = tmp_path_factory.mktemp('tiny_study')
    configs = root / 'configs'
    configs.mkdir()
    base = osp.join(ROOT, 'configs', 'camvid', 'setr_pup_dinov2-s14_davpt_camvid.py')
    (configs / 'tiny_davpt.py').write_text(TINY_DAVPT.format(base=base))
    (configs / 'tiny_vpt.py').write_text(NO_GUIDANCE.format(extra=''))
    (configs / 'tiny_linear.py').write_text(NO_GUIDANCE.format(extra='num_prompts=0, '))
    _write_layout(str(root / 'data'))
    path = root / 'tiny.py'
    path.write_text(TINY_STUDY.format(config_dir=str(configs), results=str(root / 'results'),
                                      report=str(root / 'report.md'),
                                      work=str(root / 'work')))
    return dict(path=str(path), root=root)


def _study(*argv) -> int:
    return runpy.run_path(STUDY_TOOL)['main'](list(map(str, argv)))


@pytest.mark.slow
def test_a_study_made_of_data_alone_runs_skips_and_reports(tiny_study, capsys):
    root, path = tiny_study['root'], tiny_study['path']
    # Every run is a tools/train.py and a tools/test.py process (~10 s each on 2 cores), so
    # the test makes three, two of them at once, and one that fails as soon as its model is
    # built (a guided block the trunk lacks) beside them; then a third under another schedule.
    run = [path, 'run', '--data-root', root / 'data', '--seeds', 3, '--jobs', 2,
           '--variants', 'tiny-broken', 'tiny-vpt', 'tiny-all']
    assert _study(*run) == 1  # one run failed
    summary = capsys.readouterr().out.split('study tiny (two): 3 runs in ')[1]
    assert '2 finished, 1 failed' in summary
    broken_log = root / 'work' / 'tiny-broken' / 'seed3' / 'study.log'
    assert f'tiny-broken  seed 3  FAILED: tools/train.py exited with status 1; log ' \
        f'{broken_log}' in summary
    assert 'guided_blocks contains block 7, but the trunk has 4' in broken_log.read_text()
    assert not osp.exists(root / 'results' / 'tiny-broken')
    with open(root / 'results' / 'tiny-all' / 'seed3.json') as f:
        record = json.load(f)
    assert f"tiny-all     seed 3  mIoU {record['mIoU']:6.2f}" in summary
    assert record['seed'] == 3 and record['iterations'] == 2 and record['schedule'] == 'two'
    # Each run its own log; two at once split the cores between them.
    assert record['device'] == 'cpu' and record['jobs'] == 2
    assert record['threads'] == max(1, usable_cores() // 2)
    assert (root / 'work' / 'tiny-vpt' / 'seed3' / 'study.log').is_file()
    assert 0 <= record['mIoU'] <= 100 and len(record['per_class_iou']) == 4
    assert record['trainable_parameters'] > 0
    assert record['curves']['iter'] == [1, 2] and len(record['curves']['loss_prompt_token']) == 2
    assert record['mapping_updates'][0].startswith('initial mapping: [')
    assert 'randomness.seed=3' in record['commands'][0]
    assert 'model.class_assignment=all' in record['commands'][0]
    assert record['cfg_options'] == {'model.class_assignment': 'all'}
    assert record['config_diff'] == {'model.class_assignment': ['random', 'all']}
    work = root / 'work' / 'tiny-all' / 'seed3'
    with open(work / 'test_metrics_ss.json') as f:
        assert json.load(f)['mIoU'] == record['mIoU']

    # A second run finds the JSONs and trains nothing.
    shutil.move(str(root / 'work'), str(root / 'work_first'))
    assert _study(*run[:-3], 'tiny-vpt', 'tiny-all') == 0
    assert not osp.exists(root / 'work')
    # Another schedule has its own folder and its own runs.
    assert _study(path, 'run', '--schedule', 'three', '--data-root', root / 'data',
                  '--seeds', 3, '--threads', 1, '--variants', 'tiny-linear') == 0
    with open(root / 'results' / 'three' / 'tiny-linear' / 'seed3.json') as f:
        assert json.load(f)['iterations'] == 3
    assert not osp.exists(root / 'results' / 'tiny-linear')

    (root / 'report.md').write_text('# Tiny\n\nHand-written findings stay.\n')
    assert _study(path, 'report') == 0
    text = (root / 'report.md').read_text()
    assert 'Hand-written findings stay.' in text
    for block in ('power', 'main', 'contrasts', 'ablation', 'confirmation', 'per-class',
                  'plots', 'runs'):
        assert text.count(f'<!-- BEGIN GENERATED: {block} -->') == 1
    assert f"{record['mIoU']:.2f}" in text and '| class assignment | tiny-all |' in text
    assert '| two (main) | 2 iterations | CPU |' in text  # power: a row per schedule
    assert 'All 2 runs of schedule `two` trained on the CPU.' in text
    assert '| every class, guided | tiny-all − tiny-vpt | 1 |' in text
    assert '| three | the configs as written |' in text
    assert osp.isfile(root / 'results' / 'plots' / 'miou.png')


def test_curves_come_from_the_attempt_that_wrote_the_checkpoint(tmp_path):
    """An interrupted run started again leaves an older timestamped folder with a partial
    training log, and tools/test.py adds a newer one without training: the record must
    describe the newest attempt that trained, not the first folder found."""
    def attempt(stamp, iters, mapping_sizes, train=True):
        folder = tmp_path / stamp
        (folder / 'vis_data').mkdir(parents=True)
        lines = ['trainable parameters: 1,234 of 9,999']
        if train:
            lines += [f'ClassPromptMappingHook: initial mapping: cluster sizes {mapping_sizes}']
            lines += [f'Iter(train) [{i}/300]  loss: 1.0' for i in iters]
            with open(folder / 'vis_data' / 'scalars.json', 'w') as f:
                for i in iters:
                    f.write(json.dumps({'loss': 1.0 / i, 'decode.loss_ce': 0.5, 'iter': i}))
                    f.write('\n')
                f.write(json.dumps({'mIoU': 40.0, 'step': iters[-1]}) + '\n')
        (folder / f'{stamp}.log').write_text('\n'.join(lines) + '\n')

    attempt('20261130_090000', [10, 20], '[3, 2]')  # interrupted at iteration 20
    attempt('20261130_093000', [10, 20, 30], '[4, 1]')  # wrote the checkpoint
    attempt('20261130_100000', [], None, train=False)  # tools/test.py
    curves, mapping, trainable = parse_train_log(str(tmp_path))
    assert curves['iter'] == [10, 20, 30]
    assert curves['loss'][-1] == pytest.approx(1 / 30, abs=1e-5)
    assert mapping == ['initial mapping: [4, 1]'] and trainable == 1234


def _env_log(folder, *environment):
    """A training log as mmengine starts it: its environment block, then an iteration."""
    folder.mkdir(parents=True)
    (folder / f'{folder.name}.log').write_text(
        '2026/12/04 10:00:00 - mmengine - INFO - \n' + '-' * 60 + '\nSystem environment:\n'
        '    sys.platform: linux\n' + ''.join(f'    {line}\n' for line in environment) +
        '    PyTorch: 2.11.0\n\nRuntime environment:\n    seed: 0\n' + '-' * 60 + '\n'
        '2026/12/04 10:00:09 - mmengine - INFO - Iter(train) [10/600]  loss: 1.0\n')


def test_the_device_is_read_from_the_training_log(tmp_path):
    """What the run's own process found: mmengine logs the environment first thing, one
    line per kind of GPU; a run that is not distributed trains on GPU 0."""
    _env_log(tmp_path / 'gpu' / '20261204_100000', 'CUDA available: True',
             'MUSA available: False', 'GPU 0,2: NVIDIA H200', 'GPU 1: NVIDIA A100-SXM4-80GB',
             'CUDA_HOME: /usr/local/cuda')
    assert training_device(str(tmp_path / 'gpu')) == 'NVIDIA H200'
    _env_log(tmp_path / 'second' / '20261204_100000', 'CUDA available: True',
             'GPU 1: NVIDIA H200', 'GPU 0: NVIDIA A100-SXM4-80GB')
    assert training_device(str(tmp_path / 'second')) == 'NVIDIA A100-SXM4-80GB'
    _env_log(tmp_path / 'cpu' / '20261204_100000', 'CUDA available: False',
             'MUSA available: False', 'numpy_random_seed: 2147483648')
    assert training_device(str(tmp_path / 'cpu')) == 'cpu'
    # no environment block: not guessed, and kept apart from every device in the reports
    _env_log(tmp_path / 'silent' / '20261204_100000')
    assert training_device(str(tmp_path / 'silent')) == 'unknown'


# ------------------------------------------------------------------------------ report
def fake_record(variant, seed, miou, group='main'):
    return dict(variant=variant, seed=seed, mIoU=miou, group=group, aAcc=90., iterations=600,
                train_seconds=600., wall_seconds=660., trainable_parameters=1_500_000,
                per_class_iou={'sky': miou + 1, 'road': miou - 1},
                curves={'iter': [10, 20], 'decode.loss_ce': [1., .5]}, git_commit='abc')


def test_paired_differences_and_spread():
    records = [fake_record('vpt-deep', s, m) for s, m in ((0, 40.), (1, 44.), (2, 42.))] + \
        [fake_record('davpt', s, m) for s, m in ((0, 41.), (1, 45.5), (3, 50.))]
    runs = study_report.by_variant(records)
    mean, std, n = study_report.paired_difference(runs, 'davpt', 'vpt-deep')
    assert n == 2 and mean == pytest.approx(1.25) and std == pytest.approx(math.sqrt(0.125))
    assert study_report.mean_std([40., 44., 42.]) == (42., 2.)
    assert math.isnan(study_report.mean_std([1.])[1])
    assert study_report.fmt(42., 2.) == '42.00 ± 2.00'


def test_contrasts_pair_a_variant_with_its_control_seed_by_seed():
    from harness.study.spec import Contrast
    records = [fake_record('control', s, m) for s, m in ((0, 40.), (1, 44.), (2, 42.))] + \
        [fake_record('arm', s, m) for s, m in ((0, 41.), (1, 45.5), (3, 50.))]
    table = study_report.contrast_table(study_report.by_variant(records), [
        Contrast('arm', 'control', 'the one change'), Contrast('arm', 'nothing', 'absent')])
    # seeds 0 and 1 only (seed 3 has no control); std of (1, 1.5) = 0.354, 1.25 / 0.354
    assert '| the one change | arm − control | 2 | +1.00 / +1.50 | +1.25 ± 0.35 | 3.5 |' in table
    assert 'absent' not in table


def test_training_table_shows_where_the_losses_start_and_end(camvid):
    guided = fake_record('davpt', 0, 39.)
    guided['curves'].update(loss_prompt_token=[.5] + [.4] * 6 + [.1] * 5,
                            loss_prompt_cls=[.9] * 12)
    table = study_report.training_table(
        study_report.by_variant([guided, fake_record('vpt-deep', 0, 40.)]), camvid.variants)
    # the first logged value, then the mean of the last 5 logs (50 iterations)
    assert '| davpt | 1 | 0.750 | 0.500 → 0.100 | 0.900 → 0.900 | 39.00 |' in table
    assert '| vpt-deep | 1 | 0.750 | – | – | 40.00 |' in table


def _render(study, records_by_schedule, tmp_path):
    return study_report.render_report(study, records_by_schedule, str(tmp_path / 'r.md'),
                                      str(tmp_path / 'plots'))


def test_report_blocks_are_replaced_not_duplicated(tmp_path, camvid):
    records = [fake_record('vpt-deep', s, 40. + s) for s in range(3)] + \
        [fake_record('davpt', s, 39. + s) for s in range(3)] + \
        [fake_record('detach-data', s, 41. + s, 'metric gradient') for s in range(2)]
    for _ in range(2):
        blocks = _render(camvid, {'300': records}, tmp_path)
    text = open(tmp_path / 'r.md').read()
    assert text.count('<!-- BEGIN GENERATED: ablation -->') == 1
    assert blocks['confirmation'] == '(no runs yet)'
    assert '| davpt |' in blocks['main'] and '-1.00 ± 0.00' in blocks['main']
    assert '| metric gradient | detach-data |' in blocks['ablation']
    assert '+2.00 ± 0.00' in blocks['ablation']  # detach-data vs davpt, paired
    assert '| sky | 42.0 ± 1.0 | 41.0 ± 1.0 |' in blocks['per-class']
    # fake_record's CE curve ends at 0.5 and has no metric losses
    assert '| detach-data | 2 | 0.750 ± 0.000 | – | – | 41.50 ± 0.71 |' in blocks['training']


def test_ablation_rows_follow_the_study_file_not_the_alphabet(camvid):
    names = ('route', 'detach-data', 'kmeans-cls', 'davpt', 'pa-authors', 'vpt-deep')
    runs = study_report.by_variant([fake_record(name, 0, 40.) for name in names])
    table = study_report.ablation_table(runs, camvid.variants, 'davpt', 'vpt-deep')
    rows = [line.split(' | ')[1] for line in table.splitlines()[2:]]
    # reference and baseline, then each switch where camvid.py first names it
    assert rows == ['davpt', 'vpt-deep', 'pa-authors', 'kmeans-cls', 'detach-data', 'route']


def test_a_schedule_with_a_block_gets_its_own_table(tmp_path, camvid):
    records = [fake_record('vpt-deep', 0, 40.), fake_record('davpt', 0, 39.)]
    longer = [fake_record('vpt-deep', s, 45. + s) for s in range(2)] + \
        [fake_record('davpt', s, 44.5 + s) for s in range(2)]
    blocks = _render(camvid, {'300': records, 'confirm600': longer}, tmp_path)
    assert '| davpt |' in blocks['confirmation'] and '-0.50 ± 0.00' in blocks['confirmation']
    assert '**45.50 ± 0.71**' in blocks['confirmation']
    assert '-1.00' in blocks['main'] and '45.50' not in blocks['main']


def test_power_table_checks_the_margin_against_three_seed_stds(tmp_path, camvid):
    weak = [fake_record('linear', s, 30. + s) for s in range(3)] + \
        [fake_record('vpt-deep', s, 31. + s) for s in range(3)]  # +1 over std 1
    strong = [fake_record('linear', s, 30. + 0.1 * s) for s in range(3)] + \
        [fake_record('vpt-deep', s, 34. + 0.2 * s) for s in range(3)]  # +4.1 over std 0.2
    table = _render(camvid, {'300': weak, 'confirm600': strong}, tmp_path)['power']
    assert '| 300 (main) | 300 iterations, the configs as written | CPU | 31.00 ± 1.00 (n=3) | ' \
        '32.00 ± 1.00 (n=3) | +1.00 ± 0.00 | 1.0 | no |' in table
    assert '| confirm600 | 600 iterations | CPU | 30.10 ± 0.10 (n=3) | 34.20 ± 0.20 (n=3) | ' \
        '+4.10 ± 0.10 | 20.5 | **yes** |' in table


def test_curves_keep_one_colour_per_variant_in_every_panel(tmp_path, camvid):
    def record(variant, metric):
        curves = {'iter': [10, 20], 'decode.loss_ce': [2., 1.]}
        if metric:
            curves.update(loss_prompt_token=[.5, .4], loss_prompt_cls=[.9, .8])
        return dict(variant=variant, seed=0, mIoU=40., curves=curves)
    runs = study_report.by_variant([record('vpt-deep', False), record('davpt', True)])
    drawn = study_report.plot_curves(runs, camvid.variants, ['vpt-deep', 'davpt'],
                                     str(tmp_path / 'curves.png'))
    assert set(drawn[0]) == {'vpt-deep', 'davpt'} and set(drawn[1]) == {'davpt'}
    assert drawn[0]['davpt'] == drawn[1]['davpt'] == drawn[2]['davpt'] != drawn[0]['vpt-deep']
    assert os.path.getsize(tmp_path / 'curves.png') > 0


def _re_render(study, tmp_path):
    """Renders the committed report again from the committed JSONs, in a copy; returns the
    records it read, per schedule."""
    committed = osp.join(ROOT, study.report)
    report = tmp_path / 'docs' / 'results' / osp.basename(committed)
    report.parent.mkdir(parents=True)
    shutil.copy(committed, report)
    records = {s.name: load_records(study.schedule_dir(ROOT, s)) for s in study.schedules}
    study_report.render_report(study, records, str(report),
                               str(tmp_path / 'docs' / 'results' / study.name / 'plots'))
    assert report.read_text() == open(committed).read()
    return records


def test_the_camvid_report_re_renders_unchanged_from_its_jsons(tmp_path, camvid):
    records = _re_render(camvid, tmp_path)
    # the finished study's 35 runs, and the 8 the CCP study asked for since: route and
    # vpt-deep-kv on seeds 0-2, davpt-plus-detach and guided-last seed 2
    assert len(records['300']) == 35 + 8
    assert len(records['confirm600']) == 3


def test_the_ccp_report_re_renders_unchanged_from_its_jsons(tmp_path, ccp):
    records = _re_render(ccp, tmp_path)
    assert len(records['linhead-lr3e-3-600']) == 41
    assert records['linhead-lr3e-3-1800'] == []  # the longer schedule: not run yet


@pytest.mark.slow
def test_analyze_guidance_tool_on_a_tiny_config(tiny_study, capsys):
    tool = runpy.run_path(osp.join(ROOT, 'tools', 'analysis_tools', 'analyze_guidance.py'))
    config = str(tiny_study['root'] / 'configs' / 'tiny_davpt.py')
    out = str(tiny_study['root'] / 'shares.json')
    data = str(tiny_study['root'] / 'data')
    assert tool['main']([config, '--batches', '1', '--init-batches', '1', '--out', out,
                         '--cfg-options', f'train_dataloader.dataset.data_root={data}']) == 0
    printed = capsys.readouterr().out
    assert 'cluster sizes' in printed  # the initial k-means ran
    shares = {row['name']: row for row in json.load(open(out))}
    assert list(shares) == [f'prompts.{i}' for i in range(4)]
    assert shares['prompts.2']['token'] > 0 and shares['prompts.3']['token'] == 0
    assert shares['prompts.0']['ratio'] > 0


def test_main_table_names_what_ran_under_a_main_schedule_that_changes_the_configs(camvid, ccp):
    assert study_report.main_schedule_configs(camvid) == {}  # its main schedule: as written
    named = study_report.main_schedule_configs(ccp)
    assert named['davpt'] == f"`{osp.basename(ccp.final_configs['davpt'])}`"
    assert named['route'] == \
        f"`{osp.basename(ccp.variant('route').config)}` + schedule `{ccp.main_schedule}`"


def test_runs_from_different_devices_are_never_paired_or_pooled(tmp_path, camvid):
    """A record without a device field is a CPU run (every record written before the field
    was); a GPU run of the same schedule lands in a table of its own."""
    def on(device, record):
        return dict(record, device=device)
    legacy = [fake_record('vpt-deep', s, 40. + s) for s in range(3)]
    records = legacy + [on('cpu', fake_record('davpt', s, 39.5 + s)) for s in range(2)] + \
        [on('NVIDIA H200', fake_record('davpt', 2, 50.)),
         on('NVIDIA H200', fake_record('linear', 2, 30.))]
    with pytest.raises(ValueError, match=r"devices \['NVIDIA H200', 'cpu'\] would be paired"):
        study_report.by_variant(records)
    blocks = _render(camvid, {'300': records}, tmp_path)
    cpu, gpu = blocks['main'].split('On NVIDIA H200 (2 runs):')
    assert cpu.startswith('The runs of schedule `300` trained on the CPU (5 runs), NVIDIA H200 '
                          '(2 runs). Runs on different devices are neither paired nor pooled')
    # davpt's two CPU seeds, paired with VPT-Deep's CPU seeds 0 and 1 only
    assert '| davpt | `setr_pup_dinov2-s14_davpt_camvid.py` | 1.50M | 2 | **40.00 ± 0.71** | ' \
        '39.50 / 40.50 | -0.50 ± 0.00 |' in cpu
    # seed 2 on the GPU has no VPT-Deep run on the GPU to pair with, and pools with nothing
    assert '| davpt | `setr_pup_dinov2-s14_davpt_camvid.py` | 1.50M | 1 | **50.00** | 50.00 | ' \
        '– |' in gpu and '| vpt-deep |' not in gpu
    assert blocks['ablation'].count('| reference | davpt |') == 2
    assert '| 300 (main) | 300 iterations, the configs as written | CPU | – | ' \
        '41.00 ± 1.00 (n=3) |' in study_report.power_table(
            {'300': study_report.by_device(records)}, camvid)
    assert '| davpt | 2 | 300 | NVIDIA H200 | 50.00 |' in blocks['runs']
    assert '| vpt-deep | 0 | 300 | CPU | 40.00 |' in blocks['runs']
    assert blocks['plots'].startswith('Runs on the CPU only.')


def test_a_longer_schedule_is_set_beside_the_main_one(ccp):
    main = [fake_record(v, s, m + s) for v, m in (('vpt-deep', 11.), ('davpt', 10.5),
                                                  ('vpt-deep-kv', 12.), ('linear', 9.))
            for s in range(3)]
    longer = ccp.schedule('linhead-lr3e-3-1800')
    assert longer.iters == 1800 and longer.block == 'length' and longer.seeds == (0, 1, 2)
    assert set(longer.variants) == {'vpt-deep', 'davpt', 'vpt-deep-kv', 'davpt-plus-detach'}
    groups = {ccp.main_schedule: study_report.by_device(main)}
    table = study_report.length_table(ccp, groups, longer)
    # before any run: the main schedule's side, and how to make the rest
    assert '| variant | `linhead-lr3e-3-600` on CPU: val mIoU | Δ vs vpt-deep (paired) | ' \
        '`linhead-lr3e-3-1800` (not run yet): val mIoU |' in table
    assert '| davpt | 11.50 ± 1.00 (n=3) | -0.50 ± 0.00 | – | – |' in table
    assert 'linear' not in table  # not one of the schedule's variants
    assert '`python tools/study.py ccp run --schedule linhead-lr3e-3-1800 --jobs 12` makes ' \
        'its 12 runs' in table
    gpu = [dict(fake_record(v, s, m + 2 * s), device='NVIDIA H200')
           for v, m in (('vpt-deep', 13.), ('davpt', 13.5), ('vpt-deep-kv', 14.),
                        ('davpt-plus-detach', 14.5)) for s in range(3)]
    groups['linhead-lr3e-3-1800'] = study_report.by_device(gpu)
    table = study_report.length_table(ccp, groups, longer)
    assert '`linhead-lr3e-3-1800` on NVIDIA H200: val mIoU' in table
    assert '| davpt | 11.50 ± 1.00 (n=3) | -0.50 ± 0.00 | 15.50 ± 2.00 (n=3) | +0.50 ± 0.00 |' \
        in table
    # the study's contrasts whose arms both ran, under each schedule on its own device
    assert '| the detached guidance on top of the offsets | davpt-plus-detach − vpt-deep-kv | ' \
        '– | +0.50 ± 0.00 (n=3) |' in table
    assert 'not run yet' not in table


def test_run_refuses_no_jobs():
    with pytest.raises(SystemExit, match=r'--jobs 0: give 1 or more runs at a time'):
        _study('camvid', 'run', '--jobs', 0)
