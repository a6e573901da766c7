from .hooks import SemanticMappingHook

__all__ = ['SemanticMappingHook']
