"""A tiny DA-VPT model trained for two iterations by the real Runner, saved as a full
checkpoint and as a trainable-only export, with its config file and test images: what
tests/test_deploy/test_infer.py and tests/test_deploy/test_export_onnx.py run the tools on."""
import contextlib
import copy
import io
import os.path as osp
import runpy
import shutil

import numpy as np
import torch
from mmengine.config import Config
from mmseg.registry import MODELS
from PIL import Image

from tests.helpers import ROOT, build_runner, tiny_backbone, tiny_segmentor, tiny_train_cfg
from davpt_seg.checkpoint.trainable import export_trainable

SLIDE = dict(mode='slide', crop_size=(32, 32), stride=(20, 20))
TOOLS = osp.join(ROOT, 'tools')


def run_tool(name: str, *args):
    """A tool's ``main`` in-process (no second import of torch and mmseg); returns
    (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = runpy.run_path(osp.join(TOOLS, f'{name}.py'))['main'](list(map(str, args)))
    return status, out.getvalue(), err.getvalue()


def infer(*args):
    """tools/deployment/infer.py on the CPU with one thread, as a busy 2-core machine runs
    the forward fastest that way."""
    return run_tool('deployment/infer', *args, '--device', 'cpu', '--threads', '1',
                    '--no-progress')


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def _config(work_dir: str, data_root: str, trunk: str) -> dict:
    model = tiny_segmentor(tiny_backbone(init_cfg=dict(type='Pretrained', checkpoint=trunk)))
    cfg = tiny_train_cfg(work_dir, data_root, max_iters=2, model=model)
    cfg.update(test_dataloader=copy.deepcopy(cfg['val_dataloader']),
               test_evaluator=copy.deepcopy(cfg['val_evaluator']),
               test_cfg=dict(type='TestLoop'),
               tta_model=dict(type='SegTTAModel'),
               tta_pipeline=[
                   dict(type='LoadImageFromFile'),
                   dict(type='TestTimeAug', transforms=[
                       [dict(type='Resize', scale_factor=r, keep_ratio=True)
                        for r in (0.75, 1.0)],
                       [dict(type='RandomFlip', prob=p, direction='horizontal')
                        for p in (0., 1.)],
                       [dict(type='LoadAnnotations', reduce_zero_label=True)],
                       [dict(type='PackSegInputs')]])])
    return cfg


def trained_tiny_model(tmp_path_factory, data_root: str) -> dict:
    """Trains once per test session (the files stay in pytest's base temp folder, so both
    test modules share them) and returns their paths."""
    root = tmp_path_factory.getbasetemp() / 'deploy_tiny'
    paths = dict(config=str(root / 'tiny.py'), full=str(root / 'train' / 'iter_2.pth'),
                 export=str(root / 'trainable.pth'), trunk=str(root / 'trunk.pth'),
                 data_root=data_root, root=root,
                 val_images=str(root / 'images'))
    if (root / 'done').exists():
        return paths
    root.mkdir(exist_ok=True)
    torch.manual_seed(1)
    trunk = MODELS.build(tiny_backbone(tuning_mode='linear')).trunk
    torch.save(trunk.state_dict(), paths['trunk'])
    torch.manual_seed(0)
    cfg = _config(str(root / 'train'), data_root, paths['trunk'])
    build_runner(cfg).train()
    Config(cfg).dump(paths['config'])
    export_trainable(paths['full'], paths['export'])
    # The validation images (48x48), plus one of another size that is not whole patches.
    images = root / 'images'
    shutil.copytree(osp.join(data_root, 'images', 'validation'), images)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (44, 60, 3), dtype=np.uint8)).save(
        images / 'odd_size.png')
    (root / 'done').touch()
    return paths
