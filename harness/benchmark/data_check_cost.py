"""How long the tools' data check takes at ADE20K's size, per ``--data-check`` mode
(``tools/analysis_tools/benchmark_data_check.py``; figures in docs/datasets.md)."""
import os
import os.path as osp
import tempfile
import time

import numpy as np
from PIL import Image

from davpt_seg.datasets import check_dataset

ADE20K_LABEL_FILES = 20210 + 2000
WIDTH, HEIGHT = 683, 512


def write_ade_sized(root: str, files: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for folder in ('images/training', 'annotations/training'):
        os.makedirs(osp.join(root, folder), exist_ok=True)
    for index in range(files):
        label = np.full((HEIGHT, WIDTH), rng.integers(1, 151), dtype=np.uint8)
        for _ in range(rng.integers(10, 40)):
            top, left = rng.integers(0, HEIGHT - 8), rng.integers(0, WIDTH - 8)
            label[top:top + rng.integers(8, HEIGHT // 2),
                  left:left + rng.integers(8, WIDTH // 2)] = rng.integers(0, 151)
        image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        name = f'ADE_train_{index:08d}'
        Image.fromarray(image).save(osp.join(root, 'images/training', name + '.jpg'))
        Image.fromarray(label).save(osp.join(root, 'annotations/training', name + '.png'))


def measure_data_check(files: int) -> dict:
    """Times ``check_dataset`` in each mode on ``files`` ADE20K-sized pairs; returns
    ``dict(seconds={mode: (seconds, label files read)}, per_header, per_value, ade20k)``
    with the extrapolation to ADE20K's two splits."""
    with tempfile.TemporaryDirectory() as root:
        write_ade_sized(root, files)
        dataset = dict(type='ADE20KDataset', data_root=root, reduce_zero_label=True,
                       data_prefix=dict(img_path='images/training',
                                        seg_map_path='annotations/training'),
                       pipeline=[dict(type='LoadImageFromFile'),
                                 dict(type='LoadAnnotations')])
        seconds = {}
        for mode in ('off', 'sample', 'full'):
            start = time.perf_counter()
            read = check_dataset(dataset, 'train', mode).label_files
            seconds[mode] = (time.perf_counter() - start, read)
    # sample = every file's header + DEFAULT_LABEL_SAMPLES files' values; full = both for
    # every file: solve for the two per-file costs, then scale to ADE20K (2 splits).
    (sample, sampled), (full, _) = seconds['sample'], seconds['full']
    per_value = (full - sample) / (files - sampled)
    per_header = (sample - sampled * per_value) / files
    ade = dict(off='folders only',
               sample=f'{ADE20K_LABEL_FILES * per_header + 2 * sampled * per_value:.0f} s',
               full=f'{ADE20K_LABEL_FILES * (per_header + per_value) / 60:.1f} min')
    return dict(seconds=seconds, per_header=per_header, per_value=per_value, ade20k=ade)
