from .hooks import AsyncRuntimeInfoHook, ClassPromptMappingHook

__all__ = ['AsyncRuntimeInfoHook', 'ClassPromptMappingHook']
