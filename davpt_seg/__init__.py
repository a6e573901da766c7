"""DA-VPT for MMSegmentation: importing this package registers its modules.

Configs pull it in with ``custom_imports = dict(imports=['davpt_seg'])``.
"""
from . import datasets, engine, evaluation, models  # noqa: F401  (registers the modules)
from .utils import enable_safe_mmengine_checkpoints

enable_safe_mmengine_checkpoints()

__version__ = '0.1.0'
