from .prompted_vit import (TOKEN_SPACES, TUNING_MODES, GuidedBlockOutput, PromptedViT,
                           TokenSpaces, TrunkAuxiliary)

__all__ = ['PromptedViT', 'GuidedBlockOutput', 'TokenSpaces', 'TrunkAuxiliary', 'TUNING_MODES',
           'TOKEN_SPACES']
