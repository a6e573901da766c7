from .prompted_vit import (GuidedBlockOutput, PromptedViT, TrunkAuxiliary,
                           TUNING_MODES)

__all__ = ['PromptedViT', 'GuidedBlockOutput', 'TrunkAuxiliary', 'TUNING_MODES']
