from .checkpoint_safety import enable_safe_mmengine_checkpoints

__all__ = ['enable_safe_mmengine_checkpoints']
