from .async_runtime_info_hook import AsyncRuntimeInfoHook
from .class_prompt_mapping_hook import ClassPromptMappingHook

__all__ = ['AsyncRuntimeInfoHook', 'ClassPromptMappingHook']
