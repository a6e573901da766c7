"""Using a trained model: inference over image files, ONNX export and onnxruntime.

``loading`` and ``inference`` need only the training stack; ``onnx_export`` and
``onnx_runtime`` also need the ``onnx`` extra (``pip install -e ".[onnx]"``), imported
when used.
"""
from .inference import (InferenceReport, ResultWriter, WindowShapeError, collect_images,
                        output_stems, run_inference)
from .loading import (InputError, dataset_meta_for, inference_pipeline, load_config,
                      load_segmentor)

__all__ = ['InferenceReport', 'InputError', 'ResultWriter', 'WindowShapeError',
           'collect_images', 'dataset_meta_for', 'inference_pipeline', 'load_config',
           'load_segmentor', 'output_stems', 'run_inference']
