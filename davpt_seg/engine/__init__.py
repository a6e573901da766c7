from .hooks import ClassPromptMappingHook

__all__ = ['ClassPromptMappingHook']
