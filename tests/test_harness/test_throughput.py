"""benchmark.py --throughput and --profile on the CPU at the tiny size: counted FLOPs, MFU
against the measured peak, the batch sweep, the speed-ups with equal losses, the peer,
inference, the recipe's training run, and where a step's time goes."""
import gzip
import json
import os.path as osp
import runpy

import pytest

import harness.benchmark as bm
from harness.benchmark.profile import STEP_LABEL, summarise_trace
from harness.benchmark.throughput import _runner_phase_lines
from tests.helpers import ROOT

TOOL = osp.join(ROOT, 'tools', 'analysis_tools', 'benchmark.py')


@pytest.fixture(scope='module')
def throughput(tmp_path_factory):
    root = tmp_path_factory.mktemp('throughput')
    doc, raw = str(root / 'benchmarks.md'), str(root / 'throughput.json')
    # The training run of the recipe is run_smoke's, which test_benchmark's suite test
    # runs (and test_every_config builds the recipe): the stages here are the rest.
    argv = ['--setting', 'tiny', '--device', 'cpu', '--throughput', '--batch-sizes', '1', '2',
            '--variants', 'da-vpt', '--repeats', '1', '--iters', '1', '--warmup', '1',
            '--threads', '1', '--stages', 'sweep', 'speed-ups', 'peer', 'inference',
            '--compile-backend', 'aot_eager', '--out', doc, '--json', raw]
    results = runpy.run_path(TOOL)['main'](argv)
    return results, doc, raw, argv


@pytest.mark.slow
def test_flops_are_counted_and_mfu_is_against_the_measured_peak(throughput):
    results = throughput[0]
    assert not results.get('errors') and not results['skipped']
    peak = results['peak']
    assert peak['dtype'] == 'fp32' and peak['flops_per_s'] > 0
    sweep = {row['batch_size']: row for row in results['sweep']}
    assert sorted(sweep) == [1, 2]
    for row in sweep.values():
        assert row['variant'] == 'da-vpt' and row['loss_finite'] and row['peak_bytes'] > 0
        seconds = sorted(row['step_seconds'])[len(row['step_seconds']) // 2]
        assert row['img_per_s'] == pytest.approx(row['batch_size'] / seconds)
        assert row['mfu'] == pytest.approx(row['flops'] / seconds / peak['flops_per_s'])
    # Forward and backward of every image: twice the images, about twice the FLOPs (the
    # metric losses' batch coupling adds a little).
    assert sweep[2]['flops'] == pytest.approx(2 * sweep[1]['flops'], rel=0.01)


@pytest.mark.slow
def test_each_speed_up_keeps_the_loss_and_the_counted_flops(throughput):
    results = throughput[0]
    rows = results['speedups']
    assert [row['name'] for row in rows] == [name for name, _ in bm.throughput.SPEEDUPS]
    # The same model: one FLOP count (mmseg's heads) and, in fp32, the same first loss.
    assert len({row['flops'] for row in rows}) == 1
    assert rows[0]['flops'] == next(r['flops'] for r in results['sweep']
                                    if r['batch_size'] == 2)
    for row in rows:
        assert row['loss_rel_diff'] < 1e-5, row['name']
        assert row['speedup_vs_stock'] > 0
    assert [row['head'] for row in rows] == ['mmseg', 'fast', 'fast']
    assert [row['compile'] for row in rows] == [False, False, True]
    peer, = results['peer']
    assert peer['variant'] == 'mmseg-full' and peer['batch_size'] == 2 and peer['flops'] > 0


@pytest.mark.slow
def test_inference_single_scale_and_multi_scale(throughput):
    results = throughput[0]
    inference, = results['inference']  # tf32 only: bf16 joins where the sweep runs in it
    assert inference['tta_passes'] == 12  # 6 scales x flip
    for mode in ('slide', 'whole', 'tta'):
        assert inference[f'{mode}_img_per_s'] > 0
    assert results['smoke'] is None and results['options']['stages'] == [
        'sweep', 'inference', 'peer', 'speed-ups']


@pytest.mark.slow
def test_throughput_section_has_the_command_tables_and_verdicts(throughput):
    results, doc, _, argv = throughput
    text = open(doc).read()
    assert '<!-- BEGIN GENERATED: benchmark:throughput-tiny-cpu-sweep-inference-peer-speed-ups' \
        ' -->' in text
    assert 'python tools/analysis_tools/benchmark.py ' + ' '.join(argv) in text
    for heading in ('| variant | batch | step ms | img/s | TFLOP / step | TFLOP/s | MFU |',
                    '| + compile_regions (the recipe) |', '| mmseg-full | 2 |',
                    'multi-scale + flip (--tta) img/s'):
        assert heading in text, heading
    assert 'da-vpt, batch 2:' in text and '**not met**' in text  # a CPU is no H200
    everything = dict(results, options=dict(results['options'], stages=bm.THROUGHPUT_STAGES))
    assert bm.throughput_section_key(everything) == 'throughput-tiny-cpu'


def test_bad_throughput_requests_are_clear_errors():
    setting = bm.resolve_setting('tiny')
    with pytest.raises(ValueError, match='stages'):
        bm.run_throughput(setting, 'cpu', stages=('sweep', 'warp'))
    with pytest.raises(ValueError, match='batch sizes'):
        bm.run_throughput(setting, 'cpu', batch_sizes=(0, 2))
    with pytest.raises(ValueError, match='precision'):
        bm.run_throughput(setting, 'cpu', precision='fp8')


# ------------------------------------------------------------------------------ profile
def _event(cat, name, ts, dur, tid=1, **args):
    return dict(ph='X', cat=cat, name=name, ts=ts, dur=dur, tid=tid, args=args)


def test_trace_summary_finds_busy_time_top_operators_callers_and_syncs():
    """Two 100 us steps; the device works 60 us of the first and 20 us of the second."""
    events = []
    for start, kernel_us in ((0, 60), (100, 20)):
        events += [
            _event('user_annotation', STEP_LABEL, start, 100),
            _event('python_function', 'mmseg/models/losses/accuracy.py(6): accuracy',
                   start + 1, 40),
            _event('cpu_op', 'aten::topk', start + 2, 10, **{'External id': start + 1}),
            _event('cuda_runtime', 'cudaLaunchKernel', start + 3, 2),
            _event('kernel', 'topk_kernel', start + 5, kernel_us, tid=7,
                   **{'External id': start + 1}),
            _event('cpu_op', 'aten::nonzero', start + 20, 15, **{'External id': start + 2}),
            _event('cuda_runtime', 'cudaStreamSynchronize', start + 21, 12),
        ]
    events.append(_event('cuda_runtime', 'cudaDeviceSynchronize', 250, 5))  # after the steps
    summary = summarise_trace(dict(traceEvents=events), steps=2)
    assert summary['step_ms'] == pytest.approx(0.1)
    assert summary['device_idle_fraction'] == pytest.approx(1 - 80 / 200)
    assert summary['kernel_launches_per_step'] == 1
    top = summary['top_device'][0]
    assert top['name'] == 'aten::topk' and top['device_ms_per_step'] == pytest.approx(0.04)
    assert top['main_caller'] == 'mmseg/models/losses/accuracy.py(6): accuracy'
    # The nonzero's host time includes its wait; the timing's sync after the steps is not
    # a step's.
    sync, = summary['syncs']
    assert (sync['op'], sync['caller'], sync['calls_per_step']) == \
        ('aten::nonzero', 'mmseg/models/losses/accuracy.py(6): accuracy', 1)
    with pytest.raises(RuntimeError, match='2 step ranges, not 3'):
        summarise_trace(dict(traceEvents=events), steps=3)


@pytest.mark.slow
def test_profile_of_the_stock_and_the_recipe_step(tmp_path):
    doc = str(tmp_path / 'benchmarks.md')
    common = ['--setting', 'tiny', '--device', 'cpu', '--profile', '--profile-steps', '2',
              '--warmup', '1', '--threads', '1', '--compile-backend', 'aot_eager',
              '--out', doc]
    main = runpy.run_path(TOOL)['main']
    stock = main(common + ['--speedups', 'stock', '--trace', str(tmp_path / 't.json.gz')])
    recipe = main(common + ['--speedups', 'recipe'])
    with gzip.open(str(tmp_path / 't.json.gz')) as handle:
        assert any(e.get('name') == STEP_LABEL for e in json.load(handle)['traceEvents'])
    callers = {sync['caller'] for sync in stock['profile']['syncs']}
    # mmseg's accuracy indexes with boolean masks; FastSETRUPHead's does not.
    assert any('mmseg/models/losses/accuracy.py' in c for c in callers)
    assert not any('accuracy' in sync['caller'] for sync in recipe['profile']['syncs'])
    assert recipe['profile']['ops_per_step'] > 0 and recipe['profile']['top_host']
    text = open(doc).read()
    for key in ('profile-tiny-cpu-da-vpt-fp32-b2', 'profile-tiny-cpu-da-vpt-fp32-b2-stock'):
        assert f'<!-- BEGIN GENERATED: benchmark:{key} -->' in text
    assert 'Top operators by host time' in text and 'Host-device syncs' in text
    assert "the recipe's speed-ups" in text and "stock (mmseg's SETR-PUP head" in text


def test_a_changed_recipe_gets_its_own_section_and_says_what_changed():
    options = dict(device='cuda', stages=['smoke'],
                   smoke_cfg_options={'model.data_preprocessor.type': 'SegDataPreProcessor'})
    results = dict(setting=dict(name='vit-l-512'), options=options)
    assert bm.throughput_section_key(results) == \
        'throughput-vit-l-512-cuda-smoke-model.data_preprocessor.type_segdatapreprocessor'
    assert bm.throughput_section_key(dict(results, options=dict(options, smoke_cfg_options={}))) \
        == 'throughput-vit-l-512-cuda-smoke'
    phases = dict(iterations=20, period_ms=146.1, device_span_ms=142.7, device_period_ms=142.7,
                  device_idle_ms=0.0, phases_ms={'preprocess': 57.6, 'forward': 43.7})
    lines = _runner_phase_lines(phases)
    assert 'last 20 iterations; period 146.1 ms' in lines[0]
    assert '    - preprocess: 57.6 ms (the data preprocessor: copies to the device, ' \
        'normalisation, padding)' in lines
    assert 'every 142.7 ms; idle between steps 0.0 ms' in lines[-1]
    assert _runner_phase_lines(None) == []
