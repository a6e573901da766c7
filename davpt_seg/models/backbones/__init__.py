from .guided_attention import (TOKEN_SPACES, GuidedAttention, KVBiasOffsetLinear, TokenSpaces,
                               guided_block_forward)
from .prompted_vit import (TUNING_MODES, TUNING_PRESETS, GuidedBlockOutput, PromptedViT,
                           TrunkAuxiliary, resolve_tuning)

__all__ = ['PromptedViT', 'GuidedAttention', 'KVBiasOffsetLinear', 'GuidedBlockOutput',
           'TokenSpaces', 'TrunkAuxiliary', 'TUNING_MODES', 'TUNING_PRESETS', 'TOKEN_SPACES',
           'guided_block_forward', 'resolve_tuning']
