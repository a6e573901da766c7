"""The class → guided-prompt mapping, kept as model state (buffers).

Everything here travels with the model: checkpoints save it, ``--resume`` restores it, and
testing a checkpoint needs no hook. The clustering that fills it lives in the mapping hook.
"""
import torch
import torch.nn as nn

CLASS_REPRESENTATIONS = ('region', 'cls')


class ClassPromptMapping(nn.Module):
    """Maps each of ``num_classes`` classes to one of ``num_prompts`` guided prompts.

    Buffers:
        class_to_prompt (C,): the mapping; until clustered, class ``c`` → prompt ``c mod M``.
        centroids (M, D): the k-means centres behind the mapping (warm start of updates).
        class_sum (C, D), class_count (C,): class statistics gathered since the last update.
        initialized (): whether the mapping came from clustering.
    """

    def __init__(self, num_classes: int, num_prompts: int, embed_dim: int,
                 representation: str = 'region'):
        super().__init__()
        if num_prompts >= num_classes:
            raise ValueError(
                f'{num_prompts} guided prompts for {num_classes} classes: each guided prompt '
                'stands for a cluster of classes, so there must be fewer guided prompts than '
                f'classes. Set model.backbone.num_guided_prompts below {num_classes} (the paper '
                'uses 10-20 for ADE20K) and add num_extra_prompts for more capacity.')
        if representation not in CLASS_REPRESENTATIONS:
            raise ValueError(f'class representation {representation!r} is not one of '
                             f'{CLASS_REPRESENTATIONS}')
        self.num_classes, self.num_prompts, self.embed_dim = num_classes, num_prompts, embed_dim
        self.representation = representation
        self.register_buffer('class_to_prompt', torch.arange(num_classes) % num_prompts)
        self.register_buffer('centroids', torch.zeros(num_prompts, embed_dim))
        self.register_buffer('class_sum', torch.zeros(num_classes, embed_dim))
        self.register_buffer('class_count', torch.zeros(num_classes))
        self.register_buffer('initialized', torch.tensor(False))

    def forward(self, class_ids: torch.Tensor) -> torch.Tensor:
        return self.class_to_prompt[class_ids]

    @torch.no_grad()
    def accumulate(self, class_sum: torch.Tensor, class_count: torch.Tensor):
        self.class_sum += class_sum.to(self.class_sum.dtype)
        self.class_count += class_count.to(self.class_count.dtype)

    @torch.no_grad()
    def reset_statistics(self):
        self.class_sum.zero_()
        self.class_count.zero_()

    def extra_repr(self) -> str:
        return (f'num_classes={self.num_classes}, num_prompts={self.num_prompts}, '
                f'representation={self.representation!r}')
