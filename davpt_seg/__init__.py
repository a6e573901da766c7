"""DA-VPT for MMSegmentation: importing this package registers its modules.

Configs pull it in with ``custom_imports = dict(imports=['davpt_seg'])``. The layers, from
the bottom: ``checkpoint``; ``models``, ``datasets``, ``evaluation``; ``engine``;
``deploy``, ``visualization``, ``launch`` (docs/architecture.md). No module imports a layer
above its own, and nothing here imports the research harness (``harness/``) or ``tools/``.
"""
from . import datasets, engine, evaluation, models  # noqa: F401  (registers the modules)
from .checkpoint import enable_safe_mmengine_checkpoints

enable_safe_mmengine_checkpoints()

__version__ = '0.2.0'
