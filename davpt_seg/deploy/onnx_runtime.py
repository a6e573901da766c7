"""An exported per-window network under mmseg's own inference code, run by onnxruntime.

:class:`ORTSegmentor` is an mmseg segmentor whose ``encode_decode`` is the ONNX session;
everything around it is mmseg's: the config's data preprocessor, ``EncoderDecoder``'s
whole / sliding-window inference (``test_cfg``), ``BaseSegmentor.postprocess_result``
(padding removal, resize to the image, flips) and, with ``--tta``, ``SegTTAModel``. So the
PyTorch and the onnxruntime predictions differ only by the network's arithmetic.
"""
import json
import os.path as osp
from typing import List, Optional

import numpy as np
import torch
from mmseg.models.segmentors import BaseSegmentor, EncoderDecoder

from .inference import WindowShapeError
from .loading import InputError, dataset_meta_for
from .onnx_export import FORMAT_TAG, INPUT_NAME, METADATA_KEY, OUTPUT_NAME, require_onnx

# torch device type → onnxruntime execution provider
PROVIDERS = {'cpu': 'CPUExecutionProvider', 'cuda': 'CUDAExecutionProvider'}


def create_session(path: str, device: str = 'cpu', threads: int = 0):
    """An onnxruntime session for ``path`` on ``device`` ('cpu', 'cuda', 'cuda:1');
    ``threads`` > 0 sets the intra-op threads (0: onnxruntime's default)."""
    require_onnx()
    import onnxruntime as ort
    if not osp.isfile(path):
        raise InputError(f'ONNX model {path!r} does not exist')
    kind, _, index = device.partition(':')
    provider = PROVIDERS.get(kind)
    available = ort.get_available_providers()
    if provider is None or provider not in available:
        raise InputError(f'--device {device} has no onnxruntime execution provider here '
                         f'(available: {", ".join(available)}); the CUDA provider comes '
                         'with the onnxruntime-gpu package')
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: no warnings per unused initializer
    providers = [(provider, {'device_id': int(index or 0)})] if kind != 'cpu' else [provider]
    try:
        return ort.InferenceSession(path, sess_options=options, providers=providers)
    except Exception as error:  # onnxruntime raises its own types for corrupt files
        raise InputError(f'{path!r} is not a loadable ONNX model ({type(error).__name__}: '
                         f'{str(error).strip()[:300]}); export it again with '
                         'tools/deployment/export_onnx.py') from error


def read_metadata(session) -> dict:
    """What ``export_onnx`` stored with the graph (empty for other exports)."""
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if not text:
        return {}
    meta = json.loads(text)
    return meta if meta.get('format') == FORMAT_TAG else {}


class ORTSegmentor(BaseSegmentor):
    """mmseg segmentor over an ONNX session of ``InferenceGraph`` (see module doc).

    Args:
        session: onnxruntime session of the exported graph.
        model_cfg: the config's ``model`` (data preprocessor, ``test_cfg``, decode head).
        metadata: the export's metadata (class count, output channels, ...); values
            missing there come from ``model_cfg``.
    """

    # mmseg's inference code, verbatim: only encode_decode differs from EncoderDecoder.
    predict = EncoderDecoder.predict
    inference = EncoderDecoder.inference
    whole_inference = EncoderDecoder.whole_inference
    slide_inference = EncoderDecoder.slide_inference

    def __init__(self, session, model_cfg, metadata: Optional[dict] = None):
        from mmengine.config import ConfigDict
        super().__init__(data_preprocessor=model_cfg.get('data_preprocessor'))
        self.session = session
        meta = metadata or {}
        head = model_cfg.decode_head
        head = head[-1] if isinstance(head, (list, tuple)) else head
        self.num_classes = int(meta.get('num_classes', head.num_classes))
        if self.num_classes != head.num_classes:
            raise InputError(f'the ONNX model was exported with {self.num_classes} classes, '
                             f'the config has {head.num_classes}: use the config it was '
                             'exported from')
        channels = session.get_outputs()[0].shape[1]
        self.out_channels = int(meta.get('out_channels', channels if isinstance(
            channels, int) else self.num_classes))
        self.align_corners = bool(meta.get('align_corners', head.get('align_corners', False)))
        # postprocess_result and SegTTAModel read the binary threshold from decode_head.
        self.decode_head = ConfigDict(threshold=meta.get('threshold', head.get('threshold')))
        self.test_cfg = ConfigDict(model_cfg.get('test_cfg') or dict(mode='whole'))
        input_shape = session.get_inputs()[0].shape
        self.fixed_shape = tuple(input_shape[2:]) if all(
            isinstance(d, int) for d in input_shape[2:]) else None

    def encode_decode(self, inputs: torch.Tensor, batch_img_metas: List[dict]) -> torch.Tensor:
        # The graph returns logits at its input's size, which is the size mmseg's
        # encode_decode resizes to in both inference modes (the padded input's size).
        if self.fixed_shape and tuple(inputs.shape[2:]) != self.fixed_shape:
            raise WindowShapeError(
                f'the ONNX model was exported for {self.fixed_shape[0]}x{self.fixed_shape[1]} '
                f'windows; this one is {inputs.shape[2]}x{inputs.shape[3]}. Export without '
                '--shape (dynamic height and width), or with this size')
        array = inputs.detach().to('cpu', torch.float32).numpy()
        logits = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})[0]
        return torch.from_numpy(np.ascontiguousarray(logits)).to(inputs.device)

    def extract_feat(self, inputs):
        raise NotImplementedError('an exported model has no features: it ends in logits')

    def loss(self, inputs, data_samples):
        raise NotImplementedError('an exported model cannot be trained')

    def _forward(self, inputs, data_samples=None):
        return self.encode_decode(inputs, [])


def load_onnx_segmentor(cfg, path: str, device: str = 'cpu', threads: int = 0):
    """``(ORTSegmentor, metadata)`` for the export ``path`` under ``cfg``'s inference
    settings; ``segmentor.dataset_meta`` holds the classes and palette (the export's, else
    the config's)."""
    session = create_session(path, device, threads)
    meta = read_metadata(session)
    segmentor = ORTSegmentor(session, cfg.model, meta)
    segmentor.cfg = cfg
    segmentor.dataset_meta = dataset_meta_for(cfg, meta, segmentor.num_classes)
    return segmentor.eval(), meta
