from .semantic_mapping_hook import SemanticMappingHook

__all__ = ['SemanticMappingHook']
