"""mmengine training checkpoints that load under ``torch.load(weights_only=True)``.

torch >= 2.6 loads with ``weights_only=True`` by default, and mmengine 0.10 calls
``torch.load`` without the argument, so ``--resume`` and ``load_from`` fail on the runner's
own checkpoints. Turning unpickling back on would let any checkpoint run code. Instead:

* the data-only types an mmengine checkpoint holds (``HistoryBuffer`` logs, numpy arrays,
  dtypes and scalars) are allowlisted for the safe unpickler, and
* ``HistoryBuffer`` stops pickling its registry of statistics *functions*; those are code
  references that ``HistoryBuffer.__setstate__`` re-registers on load anyway (the defaults
  always, custom ones when the module that defines them is imported).

Every checkpoint written with davpt_seg imported then loads on the safe path; nothing is ever
fully unpickled. mmengine's loader for local paths is replaced by one that says which file
is truncated or corrupt (:mod:`davpt_seg.checkpoint.files`) and also reads
``.safetensors`` (trainable-only exports).
"""
import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from .files import load_from_local


def _data_only_state(self) -> dict:
    return {k: v for k, v in self.__dict__.items() if k != 'statistics_methods'}


def _numpy_globals() -> list:
    core = getattr(np, '_core', None) or np.core  # numpy 2 renamed np.core → np._core
    dtype_classes = [getattr(np.dtypes, name) for name in getattr(np.dtypes, '__all__', ())]
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype,
            *dtype_classes]


def enable_safe_mmengine_checkpoints() -> None:
    """Idempotent; called when davpt_seg is imported."""
    HistoryBuffer.__getstate__ = _data_only_state
    torch.serialization.add_safe_globals([HistoryBuffer, *_numpy_globals()])
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)
