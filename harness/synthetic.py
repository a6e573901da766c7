"""A small seeded dataset in ADE20K's directory layout, for tests and the CPU demo.

Each image has a textured background class and one to three objects whose class decides both
shape and texture, so the classes are learnable from a few hundred pixels. Label maps follow
ADE20K's convention: 0 means "other" (ignored under ``reduce_zero_label``), classes are 1..N.
"""
import os
import os.path as osp
from typing import Sequence

import numpy as np
from PIL import Image

# Class k (1-based) is drawn as SHAPES[k % len] with colour PALETTE[k] and its own texture.
SHAPES = ('rectangle', 'ellipse', 'triangle')
PALETTE = np.array([
    [0, 0, 0], [200, 60, 60], [60, 180, 70], [60, 90, 210], [230, 200, 40], [170, 60, 200],
    [40, 200, 200], [240, 130, 40], [120, 120, 120], [250, 250, 250], [110, 70, 30],
], dtype=np.float32)
MAX_CLASSES = len(PALETTE) - 1


def _texture(kind: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    patterns = (
        np.sin(yy / 2.0),  # horizontal stripes
        np.sin(xx / 2.0),  # vertical stripes
        np.sin((xx + yy) / 3.0),  # diagonal stripes
        ((yy // 4 + xx // 4) % 2) * 2 - 1,  # checkerboard
        np.zeros_like(xx),  # flat
    )
    return patterns[kind % len(patterns)] * 40 + rng.normal(0, 12, (height, width))


def _shape_mask(shape: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    h = rng.integers(height // 4, height // 2 + 1)
    w = rng.integers(width // 4, width // 2 + 1)
    top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
    inside = (yy >= top) & (yy < top + h) & (xx >= left) & (xx < left + w)
    if shape == 'ellipse':
        cy, cx = top + h / 2, left + w / 2
        inside = ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1
    elif shape == 'triangle':
        inside &= (xx - left) * h >= (yy - top) * w * 0.5  # a wedge: not a box
    return inside


def render_sample(num_classes: int, size: int, rng: np.random.Generator):
    """One (image HxWx3 uint8, label HxW uint8) pair."""
    background = int(rng.integers(1, 3))  # classes 1 and 2 are "stuff"
    label = np.full((size, size), background, dtype=np.uint8)
    objects = np.arange(3, num_classes + 1)
    num_objects = min(int(rng.integers(1, 4)), len(objects))
    for cls in rng.choice(objects, size=num_objects, replace=False):
        label[_shape_mask(SHAPES[cls % len(SHAPES)], size, size, rng)] = cls
    label[:, :2] = 0  # a strip of "other": exercises reduce_zero_label / ignore
    image = np.empty((size, size, 3), dtype=np.float32)
    for cls in np.unique(label):
        region = label == cls
        texture = _texture(int(cls), size, size, rng)
        image[region] = PALETTE[cls] + texture[region, None]
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_ade_like_dataset(root: str, num_train: int = 64, num_val: int = 16, size: int = 64,
                          num_classes: int = 6, seed: int = 0,
                          splits: Sequence[str] = ('training', 'validation')) -> str:
    """Writes ``root/images/<split>/*.jpg`` and ``root/annotations/<split>/*.png``.

    Returns ``root``. Deterministic for a given seed.
    """
    if not 3 <= num_classes <= MAX_CLASSES:
        raise ValueError(f'num_classes must lie in [3, {MAX_CLASSES}], got {num_classes}')
    rng = np.random.default_rng(seed)
    for split, count in zip(splits, (num_train, num_val)):
        os.makedirs(osp.join(root, 'images', split), exist_ok=True)
        os.makedirs(osp.join(root, 'annotations', split), exist_ok=True)
        for index in range(count):
            image, label = render_sample(num_classes, size, rng)
            name = f'synthetic_{split}_{index:05d}'
            Image.fromarray(image).save(osp.join(root, 'images', split, name + '.jpg'),
                                        quality=95)
            Image.fromarray(label).save(osp.join(root, 'annotations', split, name + '.png'))
    return root


def ade_class_names(num_classes: int) -> tuple:
    """The first ``num_classes`` ADE20K class names: a valid ``metainfo`` subset."""
    from mmseg.datasets import ADE20KDataset
    return tuple(ADE20KDataset.METAINFO['classes'][:num_classes])
