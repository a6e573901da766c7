"""tools/study.py: its variants, one real (tiny) run through tools/train.py + tools/test.py,
skipping finished runs, and the rendered report."""
import importlib.util
import json
import math
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config, DictAction

from davpt_seg.utils import study_report

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope='module')
def study():
    spec = importlib.util.spec_from_file_location('davpt_tool_study',
                                                  osp.join(ROOT, 'tools', 'study.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cfg_options_survive_mmengine_parsing(study):
    values = {'a': (11, ), 'b': [], 'c': True, 'd': 0.02, 'e': 'all_proxies', 'f': (3, 5)}
    parsed = {}
    for key, value in values.items():
        option = study.format_option(key, value)
        k, v = option.split('=', 1)
        parsed[k] = DictAction._parse_iterable(v)
    assert parsed == values


def test_every_variant_option_exists_in_its_config(study):
    """A mistyped option would silently add a key that nothing reads."""
    for variant in study.VARIANTS:
        cfg = Config.fromfile(osp.join(ROOT, variant.config))
        for key in variant.options:
            node = cfg
            for part in key.split('.')[:-1]:
                node = node[part]
            assert key.split('.')[-1] in node, f'{variant.name}: {key} is not in the config'


def test_config_diff_names_exactly_what_a_variant_changes(study):
    by_name = study.VARIANTS_BY_NAME
    assert study.config_diff(by_name['pa-authors']) == {
        'model.metric_loss.alpha': [32., 160.],
        'model.metric_loss.margin': [0.1, 0.02],
        'model.metric_loss.positive_average': ['positive_proxies', 'all_proxies']}
    assert study.config_diff(by_name['davpt']) == {}
    diff = study.config_diff(by_name['vpt-deep'])
    assert diff['model.backbone.tuning_mode'] == ['da-vpt', 'vpt-deep']
    assert diff['model.token_loss_weight'] == [0.05, 0.]


def test_final_configs_are_the_variants_the_study_measured(study):
    for name, path in study.FINAL_CONFIGS.items():
        variant = study.VARIANTS_BY_NAME[name]
        measured = Config.fromfile(osp.join(ROOT, variant.config))
        measured.merge_from_dict(dict(variant.options))
        assert Config.fromfile(osp.join(ROOT, path)).to_dict() == measured.to_dict(), name
        assert variant.options  # else the variant's own config is the final one


def test_study_configs_build_their_tuning_modes(study):
    from mmseg.registry import MODELS
    trainable = {}
    for name in ('linear', 'bias', 'vpt-deep', 'davpt', 'davpt-plus', 'full'):
        cfg = Config.fromfile(osp.join(ROOT, study.VARIANTS_BY_NAME[name].config))
        model = MODELS.build(cfg.model)
        trainable[name] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert model.backbone.trunk.patch_embed.patch_size == (14, 14)
        assert model.backbone.embed_dim == 384 and model.backbone.depth == 12
    assert trainable['linear'] < trainable['vpt-deep'] == trainable['davpt'] < \
        trainable['davpt-plus'] < trainable['full']
    assert trainable['linear'] < trainable['bias'] < trainable['full']
    # 10 prompts of 384 in each of the 12 blocks; DA-VPT+ adds k/v offsets (2 x 384 each).
    assert trainable['vpt-deep'] - trainable['linear'] == 12 * 10 * 384
    assert trainable['davpt-plus'] - trainable['davpt'] == 12 * 2 * 384


def test_sgd_recipe_puts_the_head_at_ten_times_the_lr(study):
    from mmengine.optim import build_optim_wrapper
    from mmseg.registry import MODELS
    cfg = Config.fromfile(osp.join(ROOT, study.VARIANTS_BY_NAME['sgd-authors'].config))
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    optimizer = wrapper.optimizer
    assert type(optimizer).__name__ == 'SGD'
    head = {id(p) for p in model.decode_head.parameters()}
    lrs = {('head' if id(p) in head else 'other', g['lr']) for g in optimizer.param_groups
           for p in g['params'] if p.requires_grad}
    assert lrs == {('head', 1e-2), ('other', 1e-3)}
    assert all(g['momentum'] == 0.9 and g['weight_decay'] == 0 for g in optimizer.param_groups)


# ------------------------------------------------------------------ a real (tiny) run
TINY_TIMM = dict(embed_dim=32, depth=4, num_heads=2, img_size=28)


def tiny_variant_config(path, base):
    text = f'''
_base_ = [{base!r}]
crop_size = (28, 28)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=crop_size, timm_kwargs=dict(embed_dim=32, depth=4, num_heads=2),
                  out_indices=(3, ), guided_blocks=(2, ), num_prompts=2,
                  num_guided_prompts=3, num_extra_prompts=1),
    decode_head=dict(in_channels=32, channels=8, num_convs=1, up_scale=2))
train_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
    dict(type='RandomCrop', crop_size=crop_size), dict(type='PackSegInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
default_hooks = dict(logger=dict(interval=1))
'''
    with open(path, 'w') as f:
        f.write(text)
    return path


@pytest.fixture
def tiny_camvid(tmp_path):
    from test_camvid import _converter, make_segnet_camvid
    src = make_segnet_camvid(str(tmp_path / 'segnet'), count=3, size=(42, 28))
    out = str(tmp_path / 'camvid')
    _converter().main([src, '-o', out, '--splits', 'train', 'val'])
    return out


def test_a_tiny_study_runs_skips_and_reports(study, tmp_path, tiny_camvid, monkeypatch):
    import timm
    from safetensors.torch import save_file
    trunk = timm.create_model('vit_small_patch14_dinov2', pretrained=False, num_classes=0,
                              **TINY_TIMM)
    pretrained = str(tmp_path / 'tiny_dinov2.safetensors')
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, pretrained)
    base = osp.join(ROOT, study.VARIANTS_BY_NAME['davpt'].config)
    config = tiny_variant_config(str(tmp_path / 'tiny_davpt.py'), base)
    tiny = study.Variant('tiny', config, 'main', 'tiny DA-VPT', {'model.cls_loss_weight': 0.1})
    monkeypatch.setattr(study, 'VARIANTS', [tiny])
    monkeypatch.setattr(study, 'VARIANTS_BY_NAME', {'tiny': tiny, 'davpt': tiny})
    results = str(tmp_path / 'results')
    args = ['--results-dir', results, 'run', '--data-root', tiny_camvid, '--pretrained',
            pretrained, '--variants', 'tiny', '--seeds', '3', '--iters', '2', '--threads', '1',
            '--work-root', str(tmp_path / 'work')]
    assert study.main(args) == 0
    with open(osp.join(results, 'tiny', 'seed3.json')) as f:
        record = json.load(f)
    assert record['seed'] == 3 and record['iterations'] == 2
    assert 0 <= record['mIoU'] <= 100 and len(record['per_class_iou']) == 11
    assert record['trainable_parameters'] > 0
    assert record['curves']['iter'] == [1, 2] and len(record['curves']['loss_prompt_token']) == 2
    assert record['mapping_updates'][0].startswith('initial mapping: [')
    assert record['cfg_options'] == {'model.cls_loss_weight': 0.1}
    assert 'randomness.seed=3' in record['commands'][0]
    with open(osp.join(str(tmp_path / 'work'), 'tiny', 'seed3', 'test_metrics_ss.json')) as f:
        assert json.load(f)['mIoU'] == record['mIoU']

    # A second run finds the JSON and trains nothing.
    os.rename(str(tmp_path / 'work'), str(tmp_path / 'work_first'))
    assert study.main(args) == 0
    assert not osp.exists(str(tmp_path / 'work'))

    report = str(tmp_path / 'report.md')
    with open(report, 'w') as f:
        f.write('# Study\n\nHand-written findings stay.\n')
    assert study.main(['--results-dir', results, 'report', '--report', report]) == 0
    text = open(report).read()
    assert 'Hand-written findings stay.' in text
    assert '<!-- BEGIN GENERATED: main -->' in text and f"{record['mIoU']:.2f}" in text
    assert osp.isfile(osp.join(results, 'plots', 'miou.png'))
    assert osp.isfile(osp.join(results, 'plots', 'curves.png'))


def test_curves_come_from_the_attempt_that_wrote_the_checkpoint(study, tmp_path):
    """An interrupted run started again leaves an older timestamped folder with a partial
    training log, and tools/test.py adds a newer one without training: the record must
    describe the newest attempt that trained, not the first folder found."""
    def attempt(stamp, iters, mapping_sizes, train=True):
        folder = tmp_path / stamp
        (folder / 'vis_data').mkdir(parents=True)
        lines = ['trainable parameters: 1,234 of 9,999']
        if train:
            lines += [f'SemanticMappingHook: initial mapping: cluster sizes {mapping_sizes}']
            lines += [f'Iter(train) [{i}/300]  loss: 1.0' for i in iters]
            with open(folder / 'vis_data' / 'scalars.json', 'w') as f:
                for i in iters:
                    f.write(json.dumps({'loss': 1.0 / i, 'decode.loss_ce': 0.5, 'iter': i}) + '\n')
                f.write(json.dumps({'mIoU': 40.0, 'step': iters[-1]}) + '\n')
        (folder / f'{stamp}.log').write_text('\n'.join(lines) + '\n')

    attempt('20261130_090000', [10, 20], '[3, 2]')            # interrupted at iteration 20
    attempt('20261130_093000', [10, 20, 30], '[4, 1]')        # wrote the checkpoint
    attempt('20261130_100000', [], None, train=False)         # tools/test.py
    curves, mapping, trainable = study.parse_train_log(str(tmp_path))
    assert curves['iter'] == [10, 20, 30] and curves['loss'][-1] == pytest.approx(1 / 30, abs=1e-5)
    assert mapping == ['initial mapping: [4, 1]'] and trainable == 1234


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


def test_training_table_shows_where_the_losses_start_and_end(study):
    guided = fake_record('davpt', 0, 39.)
    guided['curves'].update(loss_prompt_token=[.5] + [.4] * 6 + [.1] * 5,
                            loss_prompt_cls=[.9] * 12)
    table = study_report.training_table(
        study_report.by_variant([guided, fake_record('vpt-deep', 0, 40.)]), study.VARIANTS)
    # the first logged value, then the mean of the last 5 logs (50 iterations)
    assert '| davpt | 1 | 0.750 | 0.500 → 0.100 | 0.900 → 0.900 | 39.00 |' in table
    assert '| vpt-deep | 1 | 0.750 | – | – | 40.00 |' in table


def test_report_blocks_are_replaced_not_duplicated(tmp_path, study):
    records = [fake_record('vpt-deep', s, 40. + s) for s in range(3)] + \
        [fake_record('davpt', s, 39. + s) for s in range(3)] + \
        [fake_record('detach-data', s, 41. + s, 'metric gradient') for s in range(2)]
    report = str(tmp_path / 'camvid.md')
    for _ in range(2):
        blocks = study_report.render_report(records, study.VARIANTS, report,
                                            str(tmp_path / 'plots'), 'davpt', 'vpt-deep')
    text = open(report).read()
    assert text.count('<!-- BEGIN GENERATED: ablation -->') == 1
    assert blocks['confirmation'] == '(no runs yet)'
    assert '| davpt |' in blocks['main'] and '-1.00 ± 0.00' in blocks['main']
    assert '| metric gradient | detach-data |' in blocks['ablation']
    assert '+2.00 ± 0.00' in blocks['ablation']  # detach-data vs davpt, paired
    assert '| sky | 42.0 ± 1.0 | 41.0 ± 1.0 |' in blocks['per-class']
    # fake_record's CE curve ends at 0.5 and has no metric losses
    assert '| detach-data | 2 | 0.750 ± 0.000 | – | – | 41.50 ± 0.71 |' in blocks['training']


def test_analyze_guidance_tool_on_a_tiny_config(study, tmp_path, tiny_camvid, capsys):
    spec = importlib.util.spec_from_file_location(
        'davpt_tool_analyze_guidance', osp.join(ROOT, 'tools', 'analyze_guidance.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    base = osp.join(ROOT, study.VARIANTS_BY_NAME['davpt'].config)
    config = tiny_variant_config(str(tmp_path / 'tiny_davpt.py'), base)
    out = str(tmp_path / 'shares.json')
    assert tool.main([config, '--batches', '1', '--init-batches', '1', '--out', out,
                      '--cfg-options', f'train_dataloader.dataset.data_root={tiny_camvid}',
                      'model.backbone.init_cfg=None']) == 0
    printed = capsys.readouterr().out
    assert 'cluster sizes' in printed  # the initial k-means ran
    shares = {row['name']: row for row in json.load(open(out))}
    assert list(shares) == [f'prompts.{i}' for i in range(4)]
    assert shares['prompts.2']['token'] > 0 and shares['prompts.3']['token'] == 0
    assert shares['prompts.0']['ratio'] > 0


def test_confirmation_runs_get_their_own_table(tmp_path, study):
    records = [fake_record('vpt-deep', 0, 40.), fake_record('davpt', 0, 39.)]
    longer = [fake_record('vpt-deep', s, 45. + s) for s in range(2)] + \
        [fake_record('davpt', s, 44.5 + s) for s in range(2)]
    blocks = study_report.render_report(records, study.VARIANTS, str(tmp_path / 'r.md'),
                                        str(tmp_path / 'plots'), 'davpt', 'vpt-deep',
                                        confirmation_records=longer)
    assert '| davpt |' in blocks['confirmation'] and '-0.50 ± 0.00' in blocks['confirmation']
    assert '**45.50 ± 0.71**' in blocks['confirmation']
    assert '-1.00' in blocks['main'] and '45.50' not in blocks['main']


def test_curves_keep_one_colour_per_variant_in_every_panel(tmp_path, study):
    def record(variant, metric):
        curves = {'iter': [10, 20], 'decode.loss_ce': [2., 1.]}
        if metric:
            curves.update(loss_prompt_token=[.5, .4], loss_prompt_cls=[.9, .8])
        return dict(variant=variant, seed=0, mIoU=40., curves=curves)
    runs = study_report.by_variant([record('vpt-deep', False), record('davpt', True)])
    drawn = study_report.plot_curves(runs, study.VARIANTS, ['vpt-deep', 'davpt'],
                                     str(tmp_path / 'curves.png'))
    assert set(drawn[0]) == {'vpt-deep', 'davpt'} and set(drawn[1]) == {'davpt'}
    assert drawn[0]['davpt'] == drawn[1]['davpt'] == drawn[2]['davpt'] != drawn[0]['vpt-deep']
    assert os.path.getsize(tmp_path / 'curves.png') > 0
