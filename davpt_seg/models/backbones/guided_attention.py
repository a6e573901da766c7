"""timm's attention with what DA-VPT needs from it; the one place that knows timm's internals.

:class:`GuidedAttention` is ``timm.layers.Attention`` (same weights, same state-dict keys,
same ``forward``), built into every block through ``VisionTransformer(attn_layer=...)``. It
adds three things:

* :meth:`GuidedAttention.heads`: the per-head query, key and value the attention compares
  (used by the guided forward and by the prompt-attention visualiser);
* :meth:`GuidedAttention.forward_with_spaces`: the forward that also returns the query, key
  and attention output of every token, the embeddings DA-VPT's metric losses compare; the
  attention map is never materialised, so SDPA's fused kernels stay usable;
* :meth:`GuidedAttention.enable_kv_bias_offset`: DA-VPT+'s learnable key/value bias offsets.

:func:`guided_block_forward` is timm ``Block.forward`` around ``forward_with_spaces``.
"""
from dataclasses import dataclass
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block

# The spaces in which a guided block exposes its tokens to the metric losses.
TOKEN_SPACES = ('input', 'query', 'key', 'attention')


@dataclass
class TokenSpaces:
    """One group of tokens of a guided block, in every space the metric losses can compare.

    ``input``: the block's input (before ``norm1``, width ``D``); ``query`` / ``key``: what
    the attention compares (heads concatenated, width ``C``); ``attention``: the attention
    output, heads concatenated, before the output projection (width ``C``).
    """
    input: torch.Tensor
    query: torch.Tensor
    key: torch.Tensor
    attention: torch.Tensor

    def __getitem__(self, space: str) -> torch.Tensor:
        if space not in TOKEN_SPACES:
            raise KeyError(f'token space {space!r} is not one of {TOKEN_SPACES}')
        return getattr(self, space)

    def map(self, select) -> 'TokenSpaces':
        """The same token selection (``select(tensor) -> tensor``) in every space."""
        return TokenSpaces(**{space: select(getattr(self, space)) for space in TOKEN_SPACES})


class KVBiasOffsetLinear(nn.Linear):
    """The fused qkv projection with a learnable offset on its key and value biases.

    The pretrained weight and bias stay frozen and untouched; the offset starts at zero, so
    the block computes exactly what the pretrained one did until training moves it.

    Only the value half does anything in a standard ViT block. A key bias ``b`` adds
    ``q . b`` to every logit of query ``q``'s row, and softmax is invariant to a per-row
    shift: the block's output, and therefore every gradient reaching the key half, is zero
    (up to rounding; ``tests/test_models/test_backbones/test_kv_bias_offset.py``). The key
    half only matters when something non-linear acts on the keys between the bias and the
    logits, i.e. a trunk with k-normalisation (timm's ``qk_norm=True``), or when a metric
    loss compares keys themselves (``embedding_pairing='key-query'`` moves the guided
    prompts' keys without changing the segmentation). It is kept, per the paper's DA-VPT+
    (k and v biases), so that the trainable-parameter count matches the paper and
    checkpoints keep one layout.
    """

    def __init__(self, qkv: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = qkv.in_features, qkv.out_features
        self.weight = qkv.weight
        self.bias = qkv.bias
        self.query_width = qkv.out_features // 3
        self.kv_bias_offset = nn.Parameter(
            torch.zeros(2 * self.query_width, device=qkv.weight.device,
                        dtype=qkv.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = F.pad(self.kv_bias_offset, (self.query_width, 0))
        bias = offset if self.bias is None else self.bias + offset
        return F.linear(x, self.weight, bias)


class GuidedAttention(Attention):
    """``timm.layers.Attention`` that can also return its tokens' embeddings.

    Constructed by timm (``VisionTransformer(attn_layer=GuidedAttention)``) with timm's own
    arguments, so every ViT family that builds its blocks from ``Block(attn_layer=...)``
    works, DINOv2's layer scale and ``qk_norm`` trunks included.
    """

    def enable_kv_bias_offset(self) -> None:
        """DA-VPT+: a zero-initialised learnable offset on the key and value biases."""
        if not isinstance(self.qkv, KVBiasOffsetLinear):
            self.qkv = KVBiasOffsetLinear(self.qkv)

    @property
    def has_kv_bias_offset(self) -> bool:
        return isinstance(self.qkv, KVBiasOffsetLinear)

    def heads(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head (B, heads, L, head_dim) query, key and value for the normalised input
        ``x`` (after the block's ``norm1``): those the attention compares and mixes."""
        batch, length, _ = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def forward_with_spaces(self, x: torch.Tensor
                            ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """``forward(x)`` plus every token's ``query``, ``key`` and ``attention`` output
        (heads concatenated; the attention output before the output projection)."""
        batch, length, _ = x.shape
        q, k, v = self.heads(x)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop.p if self.training else 0.)

        def heads_joined(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(1, 2).reshape(batch, length, self.attn_dim)

        attention = self.norm(heads_joined(out))
        gate = getattr(self, 'gate', None)  # timm >= 1.0.28: optional output gate
        if gate is not None:
            attention = attention * gate(x).sigmoid()
        spaces = dict(query=heads_joined(q), key=heads_joined(k), attention=attention)
        return self.proj_drop(self.proj(attention)), spaces


def guided_block_forward(block: Block, x: torch.Tensor
                         ) -> Tuple[torch.Tensor, TokenSpaces]:
    """timm ``Block.forward(x)`` that also returns every token in every ``TokenSpaces``
    space; ``block`` is a timm ``Block`` whose attention is a :class:`GuidedAttention`."""
    attended, spaces = block.attn.forward_with_spaces(block.norm1(x))
    out = x + block.drop_path1(block.ls1(attended))
    out = out + block.drop_path2(block.ls2(block.mlp(block.norm2(out))))
    return out, TokenSpaces(input=x, **spaces)


def check_guidable(block: nn.Module, index: int) -> None:
    """Raises unless ``guided_block_forward`` computes exactly what ``block`` does."""
    if type(block) is not Block or not isinstance(block.attn, GuidedAttention):
        raise TypeError(
            f'block {index} is a {type(block).__name__} with {type(block.attn).__name__}; '
            'guided blocks need timm\'s standard pre-norm Block built with '
            'attn_layer=GuidedAttention (timm ViT, DeiT, DINOv2, ... architectures)')
