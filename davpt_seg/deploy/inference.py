"""Label maps and overlays for image files: what ``tools/deployment/infer.py`` runs.

The model is anything with mmengine's ``test_step``: the PyTorch segmentor, mmseg's
``SegTTAModel`` around it, or :class:`~davpt_seg.deploy.onnx_runtime.ORTSegmentor`. All
of them run mmseg's own whole/slide inference and post-processing (crop of the padding,
resize to the image's size, flips), so the backends differ only in the network.
"""
import glob
import os
import os.path as osp
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .loading import InputError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
OVERLAY_SUFFIX = '_overlay'
# Label PNGs hold class indices: 8-bit up to 256 classes, 16-bit (which PNG and OpenCV
# support) up to 65536.
MAX_CLASSES = 2**16


class WindowShapeError(ValueError):
    """The network cannot take a window of this size (a fixed-shape ONNX export): the
    images of that size fail, the others go on."""


# ------------------------------------------------------------------------------ inputs
def _is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def collect_images(inputs: Sequence[str]) -> List[str]:
    """Image files from files, folders (their image files, not recursive) and glob
    patterns (``**`` recurses), in the order given, each file once.

    A named file is taken whatever its extension (if it is no image, it fails as one);
    folders and patterns contribute the files with an image extension. An input that
    matches nothing is an error: a typo should not pass as an empty run.
    """
    found: List[str] = []
    for item in inputs:
        if osp.isdir(item):
            matches = sorted(osp.join(item, name) for name in os.listdir(item)
                             if osp.isfile(osp.join(item, name)) and _is_image_name(name))
            if not matches:
                raise InputError(f'folder {item!r} holds no image files '
                                 f'({", ".join(IMAGE_EXTENSIONS)})')
        elif glob.has_magic(item):
            matches = sorted(path for path in glob.glob(item, recursive=True)
                             if osp.isfile(path) and _is_image_name(path))
            if not matches:
                raise InputError(f'pattern {item!r} matches no image file')
        elif osp.isfile(item):
            matches = [item]
        else:
            raise InputError(f'input {item!r} does not exist (give image files, folders or '
                             'glob patterns)')
        found += matches
    unique = {}
    for path in found:
        unique.setdefault(osp.realpath(path), path)
    if not unique:
        raise InputError('no images matched the inputs')
    return list(unique.values())


def output_stems(images: Sequence[str]) -> Dict[str, str]:
    """Image path → the stem of its outputs (``<stem>.png``, ``<stem>_overlay.png``).

    Outputs sit flat in the output folder, so two inputs with the same stem (``a/x.jpg``,
    ``b/x.png``) would overwrite each other: that is an error before any work.
    """
    stems: Dict[str, str] = {}
    by_stem: Dict[str, List[str]] = {}
    for path in images:
        stem = osp.splitext(osp.basename(path))[0]
        stems[path] = stem
        by_stem.setdefault(stem, []).append(path)
    clashes = {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}
    if clashes:
        listed = '; '.join(f'{stem}: {", ".join(paths)}' for stem, paths in
                           list(clashes.items())[:5])
        raise InputError(f'{len(clashes)} output name(s) would be written twice ({listed}): '
                         'run those inputs into different --out folders')
    overlaid = [s for s in stems.values() if s.endswith(OVERLAY_SUFFIX) and
                s[:-len(OVERLAY_SUFFIX)] in by_stem]
    if overlaid:
        raise InputError(f'{overlaid[0]}.png would be both a label map and the overlay of '
                         f'{overlaid[0][:-len(OVERLAY_SUFFIX)]}: rename one of the images')
    return stems


# ----------------------------------------------------------------------------- outputs
class ResultWriter:
    """Writes ``<stem>.png`` (class indices) and ``<stem>_overlay.png`` (mmseg's
    ``SegLocalVisualizer`` with the dataset palette)."""

    def __init__(self, out_dir: str, dataset_meta: dict, opacity: float = 0.5,
                 with_labels: bool = False, overlays: bool = True):
        from mmseg.visualization import SegLocalVisualizer
        num_classes = len(dataset_meta['classes'])
        if num_classes > MAX_CLASSES:
            raise InputError(f'{num_classes} classes do not fit a 16-bit label PNG')
        self.dtype = np.uint8 if num_classes <= 256 else np.uint16
        self.out_dir, self.with_labels, self.overlays = out_dir, with_labels, overlays
        os.makedirs(out_dir, exist_ok=True)
        self.visualizer = None
        if overlays:
            # A named instance of mmengine's visualiser manager of our own: the global
            # 'visualizer' of a Runner in the same process stays untouched.
            self.visualizer = SegLocalVisualizer.get_instance(
                f'davpt_seg_infer_{id(self)}', alpha=opacity)
            self.visualizer.dataset_meta = dict(classes=list(dataset_meta['classes']),
                                                palette=dataset_meta['palette'])

    def __call__(self, stem: str, image: np.ndarray, data_sample) -> List[str]:
        import mmcv
        label = data_sample.pred_sem_seg.data[0].cpu().numpy().astype(self.dtype)
        paths = [osp.join(self.out_dir, f'{stem}.png')]
        if not mmcv.imwrite(label, paths[0]):
            raise OSError(f'could not write {paths[0]}')
        if self.visualizer is not None:
            paths.append(osp.join(self.out_dir, f'{stem}{OVERLAY_SUFFIX}.png'))
            rgb = mmcv.gray2rgb(image) if image.ndim == 2 else mmcv.bgr2rgb(image)
            self.visualizer.add_datasample(stem, rgb, data_sample, draw_gt=False,
                                           out_file=paths[1], with_labels=self.with_labels)
        return paths


# -------------------------------------------------------------------------------- run
@dataclass
class InferenceReport:
    total: int
    written: List[str] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)  # (image, reason)
    seconds: float = 0.

    @property
    def exit_status(self) -> int:
        """0: every image written; 1: some failed (the others are written)."""
        return 1 if self.failed else 0

    def summary(self, out_dir: str) -> str:
        lines = [f'{self.total} image(s): {len(self.written)} written to {out_dir}, '
                 f'{len(self.failed)} failed ({self.seconds:.1f} s)']
        lines += [f'  failed: {path}: {reason}' for path, reason in self.failed]
        return '\n'.join(lines)

    def to_dict(self) -> dict:
        return dict(total=self.total, written=self.written, seconds=round(self.seconds, 3),
                    failed=[dict(image=path, reason=reason) for path, reason in self.failed])


@dataclass
class _Prepared:
    path: str
    image: np.ndarray
    data: dict


def run_inference(model, load: Callable[[dict], dict], prepare: Callable[[dict], dict],
                  images: Sequence[str], write: Callable, batch_size: int = 1,
                  progress: bool = True, stems: Optional[Dict[str, str]] = None
                  ) -> InferenceReport:
    """Predicts every image and writes its results; unreadable images are recorded and
    skipped.

    A batch holds images of one size only: mmseg's test-time preprocessing stacks the
    images of a batch without padding them, as ``tools/test.py`` does.
    """
    import torch
    from mmengine.dataset import pseudo_collate
    from mmengine.utils import ProgressBar
    stems = stems or output_stems(images)
    report = InferenceReport(total=len(images))
    bar = ProgressBar(len(images)) if progress else None
    pending: Dict[tuple, List[_Prepared]] = {}
    start = time.perf_counter()

    def flush(key):
        items = pending.pop(key)
        try:
            with torch.no_grad():
                samples = model.test_step(pseudo_collate([item.data for item in items]))
        except WindowShapeError as error:
            report.failed += [(item.path, str(error)) for item in items]
        else:
            for item, sample in zip(items, samples):
                write(stems[item.path], item.image, sample)
                report.written.append(item.path)
        if bar is not None:
            bar.update(len(items))

    for path in images:
        try:
            results = load(dict(img_path=path))
            if results is None:
                raise ValueError('the image loader returned nothing')
            image = results['img']
            data = prepare(results)
        except Exception as error:  # any failure to read or prepare is this image's
            report.failed.append((path, f'{type(error).__name__}: {error}'))
            if bar is not None:
                bar.update()
            continue
        key = tuple(image.shape)
        pending.setdefault(key, []).append(_Prepared(path, image, data))
        if len(pending[key]) == batch_size:
            flush(key)
        elif sum(map(len, pending.values())) >= 4 * batch_size:
            flush(next(iter(pending)))  # many sizes: do not hold every image in memory
    for key in list(pending):
        flush(key)
    if bar is not None:
        print(flush=True)  # the bar does not end its line
    report.seconds = time.perf_counter() - start
    return report
