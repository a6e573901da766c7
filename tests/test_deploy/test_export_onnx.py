"""tools/deployment/export_onnx.py and the onnxruntime backend, on a tiny model trained by
the Runner.

Equality of labels: onnxruntime and PyTorch compute the same logits in another order of
floating-point operations, a few 1e-7 apart here (the export prints the max abs difference).
A pixel's label can then differ only where PyTorch's two best logits are closer than that.
The tests require equal labels on every pixel whose top-2 margin exceeds 1e-4 (two orders
above the difference, so not one of them may flip), and that such pixels are nearly all of
them; near-ties, if any, are the only pixels left to rounding.
"""
import json
import os
import os.path as osp

import pytest
import torch
from mmengine.dataset import pseudo_collate

from tests.helpers.deploy import SLIDE, infer, read_png, run_tool, trained_tiny_model
from davpt_seg.deploy import InputError, inference_pipeline, load_config, load_segmentor
from davpt_seg.deploy.onnx_runtime import create_session, load_onnx_segmentor, read_metadata

LOGIT_TOLERANCE = 1e-4  # ≫ the ~1e-7 differences measured; see the module docstring
MARGIN = 1e-4


@pytest.fixture(scope='module')
def tiny(tmp_path_factory, synthetic_ade):
    return trained_tiny_model(tmp_path_factory, synthetic_ade)


@pytest.fixture(scope='module')
def dynamic_onnx(tiny, tmp_path_factory):
    """The default export (dynamic batch, height and width) of the trainable-only file."""
    path = str(tmp_path_factory.mktemp('onnx') / 'tiny.onnx')
    return (path, *run_tool('deployment/export_onnx', tiny['config'], tiny['export'], path))


@pytest.fixture(scope='module')
def fixed_onnx(tiny, tmp_path_factory):
    """A 32x32 export, checked against a tolerance no float pipeline meets (1e-12)."""
    path = str(tmp_path_factory.mktemp('onnx_fixed') / 'tiny_32.onnx')
    return (path, *run_tool('deployment/export_onnx', tiny['config'], tiny['full'], path,
                            '--shape', '32', '32', '--tolerance', '1e-12'))


def predictions(model, cfg, images):
    load, prepare = inference_pipeline(cfg)
    samples = []
    with torch.no_grad():
        for path in images:
            samples += model.test_step(pseudo_collate([prepare(load(dict(img_path=path)))]))
    return samples


def assert_same_labels(reference, other):
    """Equal labels wherever the reference's top-2 logit margin rules out rounding."""
    decided = total = 0
    for ref, out in zip(reference, other):
        logits = ref.seg_logits.data
        assert logits.shape == out.seg_logits.data.shape
        assert (logits - out.seg_logits.data).abs().max() <= LOGIT_TOLERANCE
        top2 = logits.topk(2, dim=0).values
        clear = (top2[0] - top2[1]) > MARGIN
        assert torch.equal(ref.pred_sem_seg.data[0][clear], out.pred_sem_seg.data[0][clear])
        decided, total = decided + int(clear.sum()), total + clear.numel()
    assert decided >= 0.99 * total


def test_export_prints_its_parity_and_stores_what_inference_needs(tiny, dynamic_onnx):
    path, status, out, err = dynamic_onnx
    assert status == 0, err
    assert 'dynamic batch, height, width' in out and 'OK: max abs diff' in out
    diffs = [float(line.split('max abs diff ')[1].split()[0]) for line in out.splitlines()
             if line.startswith('  ') and 'max abs diff' in line]
    # Two windows: the model's own (32x32) and one that is not whole 8-px patches.
    assert len(diffs) == 2 and max(diffs) <= LOGIT_TOLERANCE
    assert '  32x32:' in out
    session = create_session(path)
    assert [d if isinstance(d, int) else 'dynamic' for d in session.get_inputs()[0].shape] \
        == ['dynamic', 3, 'dynamic', 'dynamic']
    meta = read_metadata(session)
    assert meta['num_classes'] == 6 and meta['shape'] is None
    assert meta['dataset_meta']['classes'][0] == 'wall'
    assert meta['preprocessing']['mean'] == [123.675, 116.28, 103.53]
    # The graph is the inference network only: no metric (guidance) branch, one output.
    assert [o.name for o in session.get_outputs()] == ['logits']


@pytest.mark.parametrize('mode', ['whole', 'slide'])
def test_onnxruntime_labels_equal_pytorch(tiny, dynamic_onnx, mode):
    options = {'model.test_cfg': SLIDE} if mode == 'slide' else None
    cfg = load_config(tiny['config'], options)
    images = sorted(osp.join(tiny['val_images'], n) for n in os.listdir(tiny['val_images']))
    reference = predictions(load_segmentor(cfg, tiny['full'])[0], cfg, images)
    ort_model = load_onnx_segmentor(cfg, dynamic_onnx[0])[0]
    assert ort_model.test_cfg.mode == mode
    assert_same_labels(reference, predictions(ort_model, cfg, images))


def test_infer_with_onnxruntime_writes_the_same_files(tiny, dynamic_onnx, tmp_path):
    """The CLI on both backends, with --tta and a batch: same names, same labels."""
    outputs = {}
    for backend, model in (('pytorch', tiny['full']), ('onnxruntime', dynamic_onnx[0])):
        outputs[backend] = tmp_path / backend
        assert infer(tiny['config'], model, tiny['val_images'], '--out', outputs[backend],
                     '--backend', backend, '--tta', '--batch-size', '2')[0] == 0
    names = sorted(os.listdir(outputs['pytorch']))
    assert names == sorted(os.listdir(outputs['onnxruntime'])) and len(names) == 11
    agree = total = 0
    for name in names:
        if name.endswith('.png') and not name.endswith('_overlay.png'):
            a, b = (read_png(outputs[k] / name) for k in ('pytorch', 'onnxruntime'))
            agree, total = agree + int((a == b).sum()), total + a.size
    # Pixel-level equality is the test above; here the plumbing (TTA merge, files).
    assert agree >= 0.999 * total


def test_a_fixed_shape_export_runs_its_windows_and_reports_other_sizes(
        tiny, fixed_onnx, tmp_path):
    path, status, out, err = fixed_onnx
    # Written, but the check fails: 1e-12 is below any float difference.
    assert status == 1 and 'FAILED: max abs diff' in err and osp.isfile(path)
    assert 'fixed 32x32' in out and '  32x32:' in out
    assert float(out.split('max abs diff ')[1].split()[0]) <= LOGIT_TOLERANCE
    # Slide inference cuts 32x32 windows from every image: the fixed graph takes them all.
    cfg = load_config(tiny['config'], {'model.test_cfg': SLIDE})
    images = sorted(osp.join(tiny['val_images'], n) for n in os.listdir(tiny['val_images']))
    assert_same_labels(predictions(load_segmentor(cfg, tiny['full'])[0], cfg, images),
                       predictions(load_onnx_segmentor(cfg, path)[0], cfg, images))
    # Whole inference feeds 48x48 and 44x60 images: each is reported, none written.
    out_dir = tmp_path / 'whole'
    assert infer(tiny['config'], path, tiny['val_images'], '--out', out_dir)[0] == 1
    failed = json.load(open(out_dir / 'summary.json'))['failed']
    assert len(failed) == len(images)
    assert all('exported for 32x32 windows' in f['reason'] for f in failed)


def test_a_damaged_onnx_file_is_a_clear_error(tiny, dynamic_onnx, tmp_path):
    payload = open(dynamic_onnx[0], 'rb').read()
    damaged = {'truncated.onnx': payload[:len(payload) // 2],
               'garbage.onnx': b'not a protobuf' * 50, 'empty.onnx': b''}
    for name, data in damaged.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InputError, match='is not a loadable ONNX model') as error:
            create_session(str(path))
        assert name in str(error.value) and 'tools/deployment/export_onnx.py' in str(error.value)
    image = osp.join(tiny['val_images'], 'odd_size.png')
    status, _, err = infer(tiny['config'], tmp_path / 'truncated.onnx', image, '--out',
                           tmp_path / 'out')
    assert status == 2 and 'truncated.onnx' in err
    with pytest.raises(InputError, match='does not exist'):
        create_session(str(tmp_path / 'missing.onnx'))
