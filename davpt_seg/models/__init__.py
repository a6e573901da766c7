from .backbones import PromptedViT
from .class_prompt_mapping import ClassPromptMapping
from .data_preprocessor import FastSegDataPreProcessor
from .decode_heads import FastSETRUPHead
from .losses import ProxyAnchorLoss
from .segmentors import DAVPTEncoderDecoder

__all__ = ['PromptedViT', 'ProxyAnchorLoss', 'DAVPTEncoderDecoder', 'ClassPromptMapping',
           'FastSETRUPHead', 'FastSegDataPreProcessor']
