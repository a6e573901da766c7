"""Converts the Clothing Co-Parsing release into the mmseg layout of ClothingCoParsingDataset.

Input (https://github.com/bearpaw/clothing-co-parsing)::

    SRC/photos/NNNN.jpg                       RGB photos (550x825)
    SRC/annotations/pixel-level/NNNN.mat      `groundtruth`: class index per pixel, 0..58
    SRC/label_list.mat                        `label_list`: the 59 class names

Output, for the photos of each split (by number; the 1004 pixel-annotated ones)::

    OUT/img_dir/{train,val,test}/NNNN.jpg     resized by --scale (bicubic), JPEG --quality
    OUT/ann_dir/{train,val,test}/NNNN.png     uint8 0..58, resized by --scale (nearest)

The default split is the one of ../shared/realdata and docs/datasets.md: photos 1-654
train, 655-804 val, 805-1004 test, at half resolution (about 275x412).

Usage: python tools/dataset_converters/ccp.py SRC [-o data/ccp] [--scale 0.5]
           [--split train=1-654 val=655-804 test=805-1004]
"""
import argparse
import os
import os.path as osp
import sys
from typing import Dict, List

import numpy as np
from PIL import Image

DEFAULT_SPLITS = ('train=1-654', 'val=655-804', 'test=805-1004')
NUM_CLASSES = 59


class ConversionError(ValueError):
    """The source does not look like the Clothing Co-Parsing release."""


def parse_splits(specs: List[str]) -> Dict[str, List[int]]:
    """``['train=1-654', 'val=655-804']`` → photo numbers per split (disjoint)."""
    splits, taken = {}, {}
    for spec in specs:
        name, sep, ranges = spec.partition('=')
        if not sep or not name:
            raise ConversionError(f'--split {spec!r}: write NAME=FIRST-LAST[,FIRST-LAST...]')
        numbers = []
        for part in ranges.split(','):
            first, _, last = part.partition('-')
            try:
                first, last = int(first), int(last or first)
            except ValueError:
                raise ConversionError(f'--split {spec!r}: {part!r} is not FIRST-LAST') from None
            if first < 1 or last < first:
                raise ConversionError(f'--split {spec!r}: {part!r} is empty or below 1')
            numbers += range(first, last + 1)
        for number in numbers:
            if number in taken:
                raise ConversionError(f'photo {number} is in both split {taken[number]!r} '
                                      f'and {name!r}: the splits must not overlap')
            taken[number] = name
        splits[name] = numbers
    return splits


def _loadmat(path: str, key: str):
    from scipy.io import loadmat
    try:
        data = loadmat(path)
    except (ValueError, NotImplementedError, OSError) as error:
        raise ConversionError(f'{path}: cannot read it as a MATLAB file ({error})') from error
    if key not in data:
        raise ConversionError(f'{path} has no variable {key!r} (it has '
                              f'{sorted(k for k in data if not k.startswith("__"))})')
    return data[key]


def read_class_names(src: str) -> List[str]:
    """The release's 59 names; they must be ClothingCoParsingDataset's, in its order."""
    from davpt_seg.datasets.ccp import CCP_CLASSES
    cells = _loadmat(osp.join(src, 'label_list.mat'), 'label_list')
    names = [str(np.asarray(cell).ravel()[0]) for cell in np.asarray(cells).ravel()]
    if tuple(names) != CCP_CLASSES:
        raise ConversionError(
            f'{osp.join(src, "label_list.mat")} lists {len(names)} classes {names[:5]}..., '
            f'not the {len(CCP_CLASSES)} of ClothingCoParsingDataset in its order: the '
            'labels would be misread; is SRC the Clothing Co-Parsing release?')
    return names


def convert_label(path: str) -> np.ndarray:
    label = np.asarray(_loadmat(path, 'groundtruth'))
    if label.ndim != 2:
        raise ConversionError(f'{path}: groundtruth must be a 2-D class map, got shape '
                              f'{label.shape}')
    if label.size and (label.min() < 0 or label.max() >= NUM_CLASSES or
                       not np.array_equal(label, np.round(label))):
        raise ConversionError(f'{path}: groundtruth holds values outside the classes '
                              f'0..{NUM_CLASSES - 1}: {np.unique(label)[:10].tolist()}')
    return label.astype(np.uint8)


def resized(image: Image.Image, scale: float, resample) -> Image.Image:
    if scale == 1:
        return image
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    return image.resize(size, resample)


def convert_split(src: str, out: str, split: str, numbers: List[int], scale: float = 0.5,
                  quality: int = 92) -> int:
    """Converts the photos ``numbers`` into split ``split``; returns the count."""
    img_out, ann_out = osp.join(out, 'img_dir', split), osp.join(out, 'ann_dir', split)
    os.makedirs(img_out, exist_ok=True)
    os.makedirs(ann_out, exist_ok=True)
    for number in numbers:
        stem = f'{number:04d}'
        photo = osp.join(src, 'photos', f'{stem}.jpg')
        mat = osp.join(src, 'annotations', 'pixel-level', f'{stem}.mat')
        for path in (photo, mat):
            if not osp.isfile(path):
                raise ConversionError(f'{path} does not exist (photo {number} of split '
                                      f'{split!r}; only photos 1-1004 have pixel labels)')
        label = convert_label(mat)
        with Image.open(photo) as image:
            image = image.convert('RGB')
            if image.size != (label.shape[1], label.shape[0]):
                raise ConversionError(f'{mat} is {label.shape[1]}x{label.shape[0]} but '
                                      f'{photo} is {image.size[0]}x{image.size[1]}')
            resized(image, scale, Image.BICUBIC).save(osp.join(img_out, f'{stem}.jpg'),
                                                      quality=quality)
        resized(Image.fromarray(label), scale, Image.NEAREST).save(
            osp.join(ann_out, f'{stem}.png'))
    return len(numbers)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='the clothing-co-parsing release (photos/, '
                        'annotations/pixel-level/, label_list.mat)')
    parser.add_argument('-o', '--out', default='data/ccp', help='output root')
    parser.add_argument('--split', nargs='+', default=list(DEFAULT_SPLITS),
                        metavar='NAME=FIRST-LAST', help='photo numbers of each split '
                        f'(default: {" ".join(DEFAULT_SPLITS)})')
    parser.add_argument('--scale', type=float, default=0.5,
                        help='resize factor (default 0.5, the half resolution of the study; '
                        '1 keeps the photos as they are)')
    parser.add_argument('--quality', type=int, default=92, help='JPEG quality')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if not 0 < args.scale <= 1:
            raise ConversionError(f'--scale {args.scale}: give a factor in (0, 1]')
        splits = parse_splits(args.split)
        read_class_names(args.src)
        for split, numbers in splits.items():
            count = convert_split(args.src, args.out, split, numbers, args.scale,
                                  args.quality)
            print(f'{split}: {count} images -> {osp.join(args.out, "img_dir", split)}')
    except ConversionError as error:
        sys.exit(f'error: {error}')


if __name__ == '__main__':
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    main()
