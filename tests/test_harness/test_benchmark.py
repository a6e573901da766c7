"""tools/analysis_tools/benchmark.py end to end on the tiny setting: every variant, every field."""
import json
import os.path as osp
import runpy

import pytest

import harness.benchmark as bm
from harness.benchmark.runner_phases import PHASES
from tests.helpers import ROOT

TOOL = osp.join(ROOT, 'tools', 'analysis_tools', 'benchmark.py')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp('bench')
    doc, raw = str(root / 'docs' / 'benchmarks.md'), str(root / 'bench.json')
    argv = ['--setting', 'tiny', '--repeats', '2', '--iters', '1', '--warmup', '1',
            '--threads', '1', '--device', 'cpu', '--out', doc, '--json', raw]
    results = runpy.run_path(TOOL)['main'](argv)
    return results, doc, raw, argv


def test_every_variant_reports_every_field(run):
    results, _, raw, _ = run
    with open(raw) as f:
        assert json.load(f)['variants'].keys() == set(bm.VARIANTS)
    for variant, entry in results['variants'].items():
        for name in bm.REQUIRED_FIELDS:
            value = entry[name]
            if name.endswith('_seconds'):
                assert len(value) == 2 and all(v > 0 for v in value), (variant, name)
            else:
                assert bm.finite(value) and value >= 0, (variant, name, value)
        assert entry['train_peak_bytes'] > 0 and entry['infer_peak_bytes'] > 0
        assert entry['train_flops'] > entry['infer_flops'] > 0
    assert results['variants']['vpt-deep']['train_ratio_vs_vpt_deep'] == 1.0
    machine = results['machine']
    for name in ('cpu', 'cores', 'threads', 'torch', 'timm', 'mmseg', 'device_name'):
        assert machine[name], name
    assert set(results['speedups']) >= {'mmseg-full/full', 'mmseg-frozen/linear'}


def test_variants_compare_like_with_like(run):
    entries = run[0]['variants']
    # Same trainable sets: our backbone vs mmseg's (which has no patch-embedding bias).
    embed_dim = bm.SETTINGS['tiny'].embed_dim
    assert entries['mmseg-full']['trainable'] + embed_dim == entries['full']['trainable']
    assert entries['mmseg-frozen']['trainable'] == entries['linear']['trainable']
    assert entries['mmseg-frozen']['trainable_backbone'] == 0
    assert entries['vpt-deep']['trainable'] == entries['da-vpt']['trainable']
    assert entries['da-vpt+']['trainable'] > entries['da-vpt']['trainable']
    assert entries['vpt-deep']['prompt_tokens'] == entries['da-vpt']['prompt_tokens']
    assert entries['da-vpt']['guidance'] and not entries['vpt-deep']['guidance']
    # Same tokens, same inference arithmetic; DA-VPT's guidance exists only in training.
    assert entries['linear']['infer_flops'] == entries['mmseg-frozen']['infer_flops']
    assert entries['da-vpt']['infer_flops'] == entries['vpt-deep']['infer_flops']
    assert entries['da-vpt']['train_flops'] > entries['vpt-deep']['train_flops']


def test_markdown_section_has_the_command_and_every_variant(run):
    results, doc, _, argv = run
    text = open(doc).read()
    assert text.startswith('# Benchmarks')
    assert '<!-- BEGIN GENERATED: benchmark:tiny-cpu -->' in text
    assert 'python tools/analysis_tools/benchmark.py ' + ' '.join(argv) in text
    for variant in bm.VARIANTS:
        assert f'| {variant} |' in text
    assert 'Targets:' in text and 'DA-VPT training step' in text
    assert 'load average' in text and results['machine']['cpu'] in text


def test_doc_sections_are_replaced_not_duplicated(tmp_path):
    doc = str(tmp_path / 'b.md')
    bm.update_doc(doc, 'a', 'first\n')
    with open(doc, 'a') as f:
        f.write('\nhand-written notes\n')
    bm.update_doc(doc, 'b', 'other\n')
    bm.update_doc(doc, 'a', 'second\n')
    text = open(doc).read()
    assert text.count('<!-- BEGIN GENERATED: benchmark:a -->') == 1 and 'second' in text
    assert 'first' not in text and 'other' in text and 'hand-written notes' in text


def test_bad_requests_are_clear_errors():
    with pytest.raises(ValueError, match='must include'):
        bm.run_benchmark(bm.SETTINGS['tiny'], ['da-vpt'])
    with pytest.raises(ValueError, match='unknown setting'):
        bm.resolve_setting('vit-h')
    with pytest.raises(ValueError, match='multiple of the patch size'):
        bm.resolve_setting('cpu', img_size=250)
    assert bm.resolve_setting('gpu').name == 'vit-l-512'


def test_bf16_checkpointing_and_a_forced_sdpa_backend_run(tmp_path):
    """The GPU options, on the CPU: with_cp recomputes under the forced SDPA backend."""
    results = runpy.run_path(TOOL)['main'](
        ['--setting', 'tiny', '--variants', 'vpt-deep', 'da-vpt+', '--repeats', '1',
         '--iters', '1', '--warmup', '0', '--threads', '1', '--device', 'cpu', '--amp',
         'bf16', '--with-cp', '--sdpa', 'math', '--no-flops',
         '--out', str(tmp_path / 'b.md')])
    assert results['options']['with_cp'] and results['options']['amp'] == 'bf16'
    assert '<!-- BEGIN GENERATED: benchmark:tiny-cpu-bf16-cp -->' in open(tmp_path / 'b.md').read()
    for entry in results['variants'].values():
        assert entry['train_ms'] > 0 and 'train_flops' not in entry


def test_memory_mode_measures_each_variant_in_a_fresh_process(tmp_path):
    doc, raw = str(tmp_path / 'b.md'), str(tmp_path / 'memory.json')
    results = runpy.run_path(TOOL)['main'](
        ['--setting', 'tiny', '--memory', '--variants', 'mmseg-full', 'da-vpt', '--cp-modes',
         'off', 'on', '--iters', '1', '--threads', '1', '--device', 'cpu', '--out', doc,
         '--json', raw])
    runs = results['runs']
    assert [(r['variant'], r['with_cp']) for r in runs] == [
        ('mmseg-full', False), ('da-vpt', False), ('mmseg-full', True), ('da-vpt', True)]
    for run in runs:
        assert 'error' not in run, run
        # The absolute peak holds the baseline (interpreter + libraries) and the rise.
        assert run['rss_baseline_bytes'] > 0 and run['peak_bytes'] > 0
        assert run['peak_rss_bytes'] >= run['rss_baseline_bytes'] + run['peak_bytes'] - 2**20
        assert run['rss_model_bytes'] >= run['rss_baseline_bytes']
    text = open(doc).read()
    assert '<!-- BEGIN GENERATED: benchmark:memory-tiny-cpu -->' in text and '| da-vpt |' in text
    assert 'peak − baseline' in text

    # A later run completes the table row by row: its rows replace the same ones, the rest
    # are kept in their order, and the section names both commands.
    first = json.load(open(raw))
    merged = runpy.run_path(TOOL)['main'](
        ['--setting', 'tiny', '--memory', '--variants', 'da-vpt', '--cp-modes', 'on',
         '--iters', '1', '--threads', '1', '--device', 'cpu', '--out', doc,
         '--merge', raw, '--json', raw])
    assert [(r['variant'], r['with_cp']) for r in merged['runs']] == \
        [(r['variant'], r['with_cp']) for r in runs]
    assert merged['runs'][:3] == first['runs'][:3]
    assert merged['started'] >= first['finished']  # the new run's times head the section
    assert merged['history'] == [{k: first[k] for k in ('command', 'started', 'finished')}]
    assert json.load(open(raw))['runs'] == merged['runs']
    text = open(doc).read()
    assert text.count('<!-- BEGIN GENERATED: benchmark:memory-tiny-cpu -->') == 1
    assert first['command'] in text and '--merge' in text
    with pytest.raises(ValueError, match='setting.name'):
        from harness.benchmark import merge_memory_results
        merge_memory_results(first, dict(merged, setting=dict(merged['setting'], name='x')))


@pytest.fixture(scope='module')
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp('suite')
    doc, raw = str(root / 'b.md'), str(root / 'suite.json')
    # aot_eager: torch.compile's tracing and graphs without inductor's C++ build (minutes).
    argv = ['--suite', '--setting', 'tiny', '--variants', 'mmseg-full', 'vpt-deep', 'da-vpt',
            '--cp-modes', 'on', '--precisions', 'fp32', 'tf32', 'bf16',
            '--compile-precisions', 'bf16', '--compile-backend', 'aot_eager', '--repeats', '2',
            '--iters', '1', '--warmup', '1', '--smoke-iters', '2', '--threads', '1',
            '--device', 'cpu', '--out', doc, '--json', raw]
    return runpy.run_path(TOOL)['main'](argv), doc, raw, argv


@pytest.mark.slow
def test_suite_times_every_variant_in_every_mode(suite):
    results, _, raw, _ = suite
    assert json.load(open(raw))['rows'] == results['rows']
    rows = {(r['variant'], r['precision'], r['compile']): r for r in results['rows']}
    modes = [('fp32', False), ('tf32', False), ('bf16', False), ('bf16', True)]
    assert set(rows) == {(v, *m) for v in ('mmseg-full', 'vpt-deep', 'da-vpt') for m in modes}
    for key, row in rows.items():
        assert 'error' not in row, (key, row)
        assert row['with_cp'] and len(row['step_seconds']) == 2, key
        assert row['step_ms'] > 0 and row['peak_bytes'] > 0 and row['loss_finite'], key
        assert row['ratio_vs_vpt_deep'] > 0 and row['ratio_vs_fp32_eager'] > 0, key
        # The compiled mode ran compiled blocks; the eager modes (first) compiled nothing.
        assert (row['compiled_graphs'] > 0) == row['compile'], key
        assert (row['ratio_vs_eager'] is not None) == row['compile'], key
    assert rows[('vpt-deep', 'bf16', True)]['ratio_vs_vpt_deep'] == 1.0
    assert rows[('da-vpt', 'fp32', False)]['ratio_vs_fp32_eager'] == 1.0
    assert results['skipped'] == []


@pytest.mark.slow
def test_suite_smoke_trains_the_real_ade20k_config(suite):
    smoke = suite[0]['smoke']
    assert smoke['passed'], smoke
    assert smoke['config'] == 'configs/setr_pup_davpt_ade20k.py'
    assert smoke['iterations_logged'] == 2 and smoke['precision'] == 'fp32'  # no GPU here
    # The DA-VPT config's metric losses trained too, and stayed finite.
    assert {'loss', 'loss_prompt_token', 'loss_prompt_cls'} <= set(smoke['loss_names'])
    assert smoke['losses_finite'] and smoke['weights_finite']
    # Where the runner's iteration went: every phase timed, the step's own work the most of
    # it on the CPU (no device here, so no device times).
    phases = smoke['runner_phases']
    assert phases['iterations'] == 1 and set(phases['phases_ms']) == set(PHASES)
    assert all(ms >= 0 for phase, ms in phases['phases_ms'].items() if phase != 'other')
    step = phases['phases_ms']['forward'] + phases['phases_ms']['backward + step']
    assert 0.5 * phases['period_ms'] < step < phases['period_ms']
    assert 'device_span_ms' not in phases


@pytest.mark.slow
def test_suite_section_names_its_command_rows_and_verdicts(suite):
    _, doc, _, argv = suite
    text = open(doc).read()
    assert '<!-- BEGIN GENERATED: benchmark:suite-tiny-cpu -->' in text
    assert 'python tools/analysis_tools/benchmark.py ' + ' '.join(argv) in text
    assert '| da-vpt | yes | bf16 + compile |' in text and '| mmseg-full | yes | tf32 |' in text
    assert 'smoke training of `configs/setr_pup_davpt_ade20k.py`' in text
    assert '**passed**' in text and 'torch.compile, da-vpt, bf16, with_cp on' in text


def test_suite_budget_skips_the_stages_it_cannot_start(tmp_path):
    results = bm.run_suite(bm.SETTINGS['tiny'], device='cpu', smoke_iters=0, budget_s=0,
                           progress=lambda line: None)
    assert results['rows'] == []
    assert [s['stage'] for s in results['skipped']] == ['with_cp off', 'with_cp on']
    text = bm.render_suite_markdown(results, 'cmd')
    assert '- skipped: with_cp on (time budget)' in text
    assert '- smoke training: not run' in text


def test_smoke_cfg_is_the_real_config_without_weights_validation_or_checkpoints(tmp_path):
    cfg = bm.smoke_cfg(bm.SMOKE_CONFIG, bm.resolve_setting('vit-l-512'), str(tmp_path),
                       str(tmp_path / 'work'), iters=50)
    assert cfg.model.backbone.init_cfg is None
    assert cfg.model.backbone.arch == 'vit_large_patch16_224'
    assert tuple(cfg.model.backbone.img_size) == (512, 512)
    assert cfg.train_dataloader.dataset.data_root == str(tmp_path)
    assert cfg.train_cfg.max_iters == 50 and cfg.val_dataloader is None
    assert cfg.default_hooks.checkpoint is None
    assert cfg.optim_wrapper.type == 'OptimWrapper'  # AMP is the smoke run's to choose
    tiny = bm.smoke_cfg(bm.SMOKE_CONFIG, bm.SETTINGS['tiny'], str(tmp_path),
                        str(tmp_path / 'work'), iters=2)
    crops = [s.crop_size for s in tiny.train_dataloader.dataset.pipeline
             if s.type == 'RandomCrop']
    assert crops == [(32, 32)] and tiny.model.backbone.out_indices == (0, 1, 2, 3)
    assert tiny.model.decode_head.in_channels == 32


def test_workers_on_an_accelerator_are_spawned_not_forked():
    """Importing mmengine asks torch.cuda.is_available(), after which a forked process (the
    forkserver's children too) cannot initialise CUDA; on the CPU forking is fine."""
    from harness.benchmark.measure import _start_context
    assert _start_context('auto', 'cuda')[1] == 'spawn'
    assert _start_context('auto', 'cuda:1')[1] == 'spawn'
    assert _start_context('auto', 'cpu')[1] == 'forkserver'
