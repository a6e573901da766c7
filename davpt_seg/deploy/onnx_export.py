"""ONNX export of a segmentor's per-window network, and its check against PyTorch.

The exported graph is ``EncoderDecoder.encode_decode`` for one window: the preprocessed
image tensor (N, 3, H, W) — RGB, ``(x - mean) / std`` as the config's data preprocessor
makes it — to the logits (N, C, H, W) at the same size. Prompts are parameters of the
backbone, so they are constants of the graph; the DA-VPT guidance exists only in
``loss`` and is not in it. Whole and sliding-window inference, padding removal, resizing
to the image and flips stay outside, in mmseg's code (see ``onnx_runtime``), exactly as
the PyTorch model runs them.

Shapes. The default graph takes any batch size, height and width: PromptedViT pads the
input to whole patches and resamples its position embedding with sizes computed from the
input, and ``torch.export`` keeps those sizes symbolic. Two things would otherwise pin the
graph to the example's shape, and :func:`export_onnx` handles both:

* mmseg's ``Upsample`` (SETR heads) computes its output size as ``int(h * 2.0)``, which
  turns the symbolic height into a constant; :func:`integer_upsampling` swaps it for
  ``h * 2`` during the export (the same number for integral factors, hence the same
  interpolation);
* shape-dependent branches are traced once: the example input is chosen so that the
  general branch is the traced one (a height and width that are not whole patches, and
  a patch grid other than the position embedding's), whose results at the other sizes
  are the same as the branch skipped (padding by 0, resampling to the same grid).

``shape=(H, W)`` exports a graph for that window size only (batch still free).
"""
import json
import os
import os.path as osp
import time
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .loading import InputError

FORMAT_TAG = 'davpt_seg.onnx.v1'
METADATA_KEY = 'davpt_seg'
INPUT_NAME, OUTPUT_NAME = 'image', 'logits'


def require_onnx():
    """Imports the optional export dependencies, with the install line when missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise InputError(f'{error.name} is not installed: ONNX export and onnxruntime '
                         'inference need `pip install -e ".[onnx]"` (onnx, onnxruntime, '
                         'onnxscript)') from error


class InferenceGraph(nn.Module):
    """One window through the segmentor: preprocessed image → logits at its size."""

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # A torch.Size img_shape is mmseg's sign for "resize the logits to this window"
        # (BaseDecodeHead.predict_by_feat), the size encode_decode gives in slide mode.
        return self.segmentor.encode_decode(image, [dict(img_shape=image.shape[2:])])


def _integer_upsample(module, x: torch.Tensor) -> torch.Tensor:
    from mmseg.models.utils import resize
    size = [dim * int(module.scale_factor) for dim in x.shape[-2:]]
    return resize(x, size, None, module.mode, module.align_corners)


@contextmanager
def integer_upsampling(model: nn.Module) -> Iterator[int]:
    """Within the block, mmseg ``Upsample`` modules with an integral scale factor compute
    their output size in integers (see the module docstring); yields how many."""
    from mmseg.models.utils import Upsample
    patched = [m for m in model.modules() if isinstance(m, Upsample) and not m.size and
               isinstance(m.scale_factor, float) and m.scale_factor.is_integer()]
    for module in patched:
        module.forward = _integer_upsample.__get__(module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            del module.forward


# ------------------------------------------------------------------------------ shapes
def patch_size_of(model: nn.Module) -> Tuple[int, int]:
    patch = getattr(model.backbone, 'patch_size', None)
    if patch is None:
        return (16, 16)
    return (patch, patch) if isinstance(patch, int) else tuple(patch)


def _position_grid(model: nn.Module) -> Tuple[int, int]:
    grid = getattr(model.backbone, 'pos_grid', None)
    return tuple(grid) if grid else (0, 0)


def window_size(model: nn.Module, cfg=None) -> Tuple[int, int]:
    """The window the model usually sees: the slide crop, else the preprocessor's size,
    else the backbone's training size."""
    test_cfg = getattr(model, 'test_cfg', None) or {}
    if test_cfg.get('mode') == 'slide':
        return tuple(test_cfg['crop_size'])
    size = getattr(model.data_preprocessor, 'size', None)
    if size:
        return tuple(size)
    img_size = getattr(model.backbone, 'img_size', None)
    if img_size:
        return (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    raise InputError('cannot tell the window size of this model: pass --shape H W')


def example_shape(model: nn.Module) -> Tuple[int, int]:
    """A height and width that take the general branch of every shape-dependent step:
    not whole patches (so the padding is traced) and a patch grid unlike the position
    embedding's in both directions (so its resampling is traced), height ≠ width."""
    (ph, pw), (gh, gw) = patch_size_of(model), _position_grid(model)
    return (gh + 1) * ph + max(1, ph // 2), (gw + 2) * pw + max(1, pw // 2)


def parity_shapes(model: nn.Module, fixed: Optional[Sequence[int]]) -> List[Tuple[int, int]]:
    """Where the export is checked: its fixed shape, or (dynamic) the usual window and one
    of another size that is not whole patches."""
    if fixed:
        return [tuple(fixed)]
    height, width = window_size(model)
    ph, pw = patch_size_of(model)
    odd = (height + ph + max(1, ph // 2) + 2, max(pw + 1, width - pw - max(1, pw // 2)))
    return [(height, width), odd]


# ------------------------------------------------------------------------------ export
def export_onnx(model: nn.Module, path: str, shape: Optional[Sequence[int]] = None,
                opset: Optional[int] = None, metadata: Optional[dict] = None) -> dict:
    """Writes ``model``'s inference graph to ``path``; returns what was written.

    ``shape=None``: dynamic batch, height and width; ``(H, W)``: that window only.
    ``metadata`` (JSON-able) is stored with the graph's own facts under the model's
    ``metadata_props['davpt_seg']``, where :mod:`onnx_runtime` reads it back.
    """
    require_onnx()
    from torch.export import Dim
    model = model.eval()
    graph = InferenceGraph(model).eval()
    height, width = tuple(shape) if shape else example_shape(model)
    # Batch 2: torch.export specialises dimensions of size 1 to constants.
    example = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    dims = {0: Dim.DYNAMIC} if shape else {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}
    start = time.perf_counter()
    with integer_upsampling(model) as patched, torch.no_grad():
        program = torch.onnx.export(
            graph, (example, ), dynamo=True, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_shapes={'image': dims},
            opset_version=opset, verbose=False)
    head = model.decode_head
    info = dict(
        format=FORMAT_TAG, input=INPUT_NAME, output=OUTPUT_NAME,
        shape=list(shape) if shape else None, num_classes=int(head.num_classes),
        out_channels=int(head.out_channels), align_corners=bool(head.align_corners),
        threshold=getattr(head, 'threshold', None), patch_size=list(patch_size_of(model)),
        upsample_modules_rewritten=patched, opset=program.model.opset_imports.get('', None),
        torch=torch.__version__, exported=time.strftime('%Y-%m-%d %H:%M:%S UTC',
                                                        time.gmtime()))
    info.update(metadata or {})
    program.model.metadata_props[METADATA_KEY] = json.dumps(info)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    # Weights go into the .onnx file up to the 2 GB protobuf limit, beside it above.
    program.save(path)
    info['seconds'] = time.perf_counter() - start
    info['bytes'] = osp.getsize(path)
    return info


# ------------------------------------------------------------------------------ parity
def check_parity(model: nn.Module, session, shapes: Sequence[Tuple[int, int]],
                 batch_size: int = 2, seed: int = 0) -> List[dict]:
    """Runs PyTorch (the unmodified model) and the ONNX session on the same random
    preprocessed input of each shape; per shape: max abs logit difference, largest
    logit magnitude, share of pixels whose class agrees."""
    graph = InferenceGraph(model.eval()).eval()
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for height, width in shapes:
        # N(0, 1): the statistics of a normalised image.
        image = torch.randn(batch_size, 3, height, width, generator=generator)
        with torch.no_grad():
            reference = graph(image)
        output = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: image.numpy()})[0])
        if output.shape != reference.shape:
            raise RuntimeError(f'the ONNX model returns {tuple(output.shape)} for input '
                               f'{tuple(image.shape)}; PyTorch returns {tuple(reference.shape)}')
        rows.append(dict(
            shape=(height, width), batch=batch_size,
            max_abs_diff=float((output - reference).abs().max()),
            max_abs_logit=float(reference.abs().max()),
            label_agreement=float((output.argmax(1) == reference.argmax(1)).float().mean())))
    return rows
