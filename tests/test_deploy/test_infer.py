"""tools/deployment/infer.py on a tiny model trained by the Runner: files, folders and globs
in; label PNGs and overlays out, from a full checkpoint and a trainable-only export; bad images
reported and skipped; bad arguments stopped with errors that name the file and the fix."""
import json
import os
import os.path as osp
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import NUM_CLASSES
from davpt_seg.deploy import dataset_meta_for, load_config
from tests.helpers.deploy import infer, read_png, trained_tiny_model


@pytest.fixture(scope='module')
def tiny(tmp_path_factory, synthetic_ade):
    return trained_tiny_model(tmp_path_factory, synthetic_ade)


@pytest.fixture(scope='module')
def inputs(tiny, tmp_path_factory):
    """Two folders of images; the inputs name one folder, a glob and a single file."""
    root = tmp_path_factory.mktemp('infer_inputs')
    images = sorted(n for n in os.listdir(tiny['val_images']) if n.endswith('.jpg'))
    (root / 'folder').mkdir()
    (root / 'globbed').mkdir()
    for name in images[:2]:
        shutil.copy(osp.join(tiny['val_images'], name), root / 'folder' / name)
    for name in images[2:4]:
        shutil.copy(osp.join(tiny['val_images'], name), root / 'globbed' / name)
    (root / 'globbed' / 'notes.txt').write_text('not an image: the glob skips it')
    single = osp.join(tiny['val_images'], 'odd_size.png')
    args = [root / 'folder', str(root / 'globbed' / '*'), single]
    expected = {osp.splitext(name)[0]: osp.join(tiny['val_images'], name)
                for name in images[:4] + ['odd_size.png']}
    return args, expected


@pytest.fixture(scope='module')
def full_run(tiny, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp('infer_full')
    # Batch 3 over 48x48 images and one 44x60: batches are grouped by size.
    status = infer(tiny['config'], tiny['full'], *inputs[0], '--out', out,
                   '--batch-size', '3')[0]
    return status, out


def test_writes_a_label_map_and_an_overlay_per_image(full_run, inputs):
    status, out = full_run
    expected = inputs[1]
    assert status == 0
    names = sorted(p for p in map(osp.basename, map(str, out.iterdir())))
    assert names == sorted([f'{s}.png' for s in expected] +
                           [f'{s}_overlay.png' for s in expected] + ['summary.json'])
    for stem, source in expected.items():
        image = read_png(source) if source.endswith('.png') else \
            np.array(Image.open(source).convert('RGB'))
        label = read_png(out / f'{stem}.png')
        assert label.dtype == np.uint8 and label.shape == image.shape[:2], stem
        assert label.max() < NUM_CLASSES
        overlay = read_png(out / f'{stem}_overlay.png')
        assert overlay.shape == image.shape[:2] + (3, )
        assert not np.array_equal(overlay, image)  # the palette is drawn over it
    summary = json.load(open(out / 'summary.json'))
    assert summary['total'] == 5 and not summary['failed'] and len(summary['written']) == 5
    assert summary['classes'][0] == 'wall'


def test_trainable_only_export_and_batch_size_give_the_same_labels(tiny, full_run, inputs,
                                                                   tmp_path):
    out = tmp_path / 'export'
    assert infer(tiny['config'], tiny['export'], *inputs[0], '--out', out,
                 '--no-overlay')[0] == 0
    for stem in inputs[1]:
        assert np.array_equal(read_png(out / f'{stem}.png'),
                              read_png(full_run[1] / f'{stem}.png')), stem
        assert not (out / f'{stem}_overlay.png').exists()


def test_tta_writes_the_same_files(tiny, inputs, tmp_path):
    out = tmp_path / 'tta'
    assert infer(tiny['config'], tiny['full'], *inputs[0], '--out', out, '--tta')[0] == 0
    for stem, source in inputs[1].items():
        with Image.open(source) as image:
            assert read_png(out / f'{stem}.png').shape == image.size[::-1]
        assert (out / f'{stem}_overlay.png').is_file()
    assert json.load(open(out / 'summary.json'))['tta'] is True


def test_unreadable_images_are_reported_by_name_and_skipped(tiny, tmp_path):
    folder = tmp_path / 'mixed'
    folder.mkdir()
    good = osp.join(tiny['val_images'], 'odd_size.png')
    shutil.copy(good, folder / 'good.png')
    (folder / 'garbage.jpg').write_bytes(b'this is no JPEG' * 20)
    payload = open(good, 'rb').read()
    (folder / 'truncated.png').write_bytes(payload[:len(payload) // 2])
    out = tmp_path / 'out'
    status, printed, _ = infer(tiny['config'], tiny['full'], folder, '--out', out)
    assert status == 1
    assert '3 image(s): 1 written' in printed and '2 failed' in printed
    for name in ('garbage.jpg', 'truncated.png'):
        assert f'failed: {folder / name}' in printed
        assert not (out / f'{osp.splitext(name)[0]}.png').exists()
    assert (out / 'good.png').is_file() and (out / 'good_overlay.png').is_file()
    failed = json.load(open(out / 'summary.json'))['failed']
    assert sorted(osp.basename(f['image']) for f in failed) == ['garbage.jpg', 'truncated.png']
    assert all('failed to load image' in f['reason'] for f in failed)


def test_bad_arguments_are_clear_errors(tiny, tmp_path):
    image = osp.join(tiny['val_images'], 'odd_size.png')
    out = tmp_path / 'out'

    def error(*args):
        status, _, err = infer(*args, '--out', out)
        assert status == 2
        return err

    assert 'no_such.py' in error(tmp_path / 'no_such.py', tiny['full'], image)
    assert 'missing.pth' in error(tiny['config'], tmp_path / 'missing.pth', image)
    (tmp_path / 'empty').mkdir()
    assert 'holds no image files' in error(tiny['config'], tiny['full'], tmp_path / 'empty')
    nothing = str(tmp_path / 'none' / '*.jpg')
    assert 'matches no image file' in error(tiny['config'], tiny['full'], nothing)
    assert 'does not exist' in error(tiny['config'], tiny['full'], tmp_path / 'nope.jpg')
    # A trainable-only export without the pretrained trunk to restore under it.
    message = error(tiny['config'], tiny['export'], image, '--cfg-options',
                    'model.backbone.init_cfg=None')
    assert tiny['export'] in message and 'init_cfg' in message
    message = error(tiny['config'], tiny['full'], image, '--backend', 'onnxruntime')
    assert 'onnxruntime takes a .onnx' in message
    # Two inputs whose outputs would overwrite each other.
    (tmp_path / 'a').mkdir()
    shutil.copy(image, tmp_path / 'a' / 'odd_size.png')
    assert 'written twice' in error(tiny['config'], tiny['full'], image,
                                    tmp_path / 'a' / 'odd_size.png')
    assert not out.exists()  # nothing was run


def test_the_config_alone_gives_the_classes_and_palette_the_runner_saved(tiny):
    """Without checkpoint meta (e.g. an ONNX file from elsewhere), classes and palette come
    from mmseg's dataset class applied to the config's metainfo: what training saved."""
    saved = torch.load(tiny['full'], map_location='cpu', weights_only=True)['meta']
    cfg = load_config(tiny['config'])
    from_config = dataset_meta_for(cfg, None, NUM_CLASSES)
    assert from_config == dataset_meta_for(cfg, saved, NUM_CLASSES)
    assert list(from_config['classes']) == list(saved['dataset_meta']['classes'])
    assert from_config['palette'][0] == [120, 120, 120]  # ADE20K's wall, not a random one
