#!/usr/bin/env python
"""How long the tools' data check takes at ADE20K's size, per --data-check mode.

Writes ``--files`` image/label pairs of ADE20K's typical size (683x512 JPEG, PNG labels made
of a few dozen regions of 150 classes, like ADE20K's) in its layout, times
``check_dataset`` in each mode and extrapolates the full check to ADE20K's 22,210 files
(20,210 train + 2,000 val). Run on an idle machine: the check is single-threaded.

    python tools/benchmark_data_check.py --files 300
"""
import argparse
import os
import os.path as osp
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from davpt_seg.datasets import check_dataset  # noqa: E402
from davpt_seg.datasets.checks import DEFAULT_LABEL_SAMPLES  # noqa: E402

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--files', type=int, default=300)
    args = parser.parse_args(argv)
    if args.files <= DEFAULT_LABEL_SAMPLES:
        parser.error(f'--files must exceed the {DEFAULT_LABEL_SAMPLES} files that sample '
                     'mode reads, to separate the two per-file costs')
    with tempfile.TemporaryDirectory() as root:
        write_ade_sized(root, args.files)
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
    per_value = (full - sample) / (args.files - sampled)
    per_header = (sample - sampled * per_value) / args.files
    ade = dict(off='folders only',
               sample=f'{ADE20K_LABEL_FILES * per_header + 2 * sampled * per_value:.0f} s',
               full=f'{ADE20K_LABEL_FILES * (per_header + per_value) / 60:.1f} min')
    print('| --data-check | label files whose values are read | seconds here | '
          'ADE20K (extrapolated) |')
    print('|---|---|---|---|')
    for mode, (elapsed, read) in seconds.items():
        print(f'| {mode} | {read} | {elapsed:.2f} | {ade[mode]} |')
    print(f'\nper file: header + size check {per_header * 1e3:.1f} ms, label values '
          f'{per_value * 1e3:.1f} ms')


if __name__ == '__main__':
    main()
