"""DA-VPT for MMSegmentation: importing this package registers its modules.

Configs pull it in with ``custom_imports = dict(imports=['davpt_seg'])``. The layers, from
the bottom: ``checkpoint``, ``mmcv_lite``; ``models``, ``datasets``, ``evaluation``; ``engine``;
``deploy``, ``visualization``, ``launch`` (docs/architecture.md). No module imports a layer
above its own, and nothing here imports the research harness (``harness/``) or ``tools/``.
"""
# First: mmseg's import of mmcv.ops needs mmcv._ext, which mmcv-lite lacks (mmcv_lite.py).
from . import mmcv_lite

mmcv_lite.install()

from . import datasets, engine, evaluation, models  # noqa: E402,F401  (registers the modules)
from .checkpoint import enable_safe_mmengine_checkpoints  # noqa: E402

enable_safe_mmengine_checkpoints()

__version__ = '0.2.0'
