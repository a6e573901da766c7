"""mmseg's EncoderDecoder plus DA-VPT's metric losses between guided prompts and the data."""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.utils import SampleList

from ..backbones.prompted_vit import TrunkAuxiliary
from ..class_mapping import ClassPromptMapping

TOKEN_POOLINGS = ('region', 'image')

# What the metric losses compare: the (prompt, patch, CLS) spaces of the guided block's
# ``TokenSpaces`` (all L2-normalised before the comparison).
EMBEDDING_PAIRINGS = {
    # Paper 3.2-3.3: the prompt's query against the patches' attention output ("saliency")
    # and the CLS query. Query and attention output are different spaces.
    'query-attention': ('query', 'attention', 'query'),
    # The space the attention itself compares: a patch (or CLS) attends to a prompt through
    # q_token . k_prompt, so pulling a class region's queries towards its prompt's key raises
    # that attention (paper section 4.1). The prompt's own query has no effect on the forward
    # pass: VPT-Deep discards the prompts' outputs after each block.
    'key-query': ('key', 'query', 'query'),
    # The authors' release: the raw prompt against the block's input tokens.
    'input': ('input', 'input', 'input'),
}


@MODELS.register_module()
class DAVPTEncoderDecoder(EncoderDecoder):
    """EncoderDecoder whose training loss adds DA-VPT's two Proxy-Anchor terms.

    At every training iteration each sample is assigned one class drawn uniformly among the
    classes present in its label map (a class is present when it is the majority label of at
    least one patch cell; ``ignore_index`` and ``background_classes`` never count). In every
    guided block of the backbone, the guided prompts' queries act as proxies for the class
    clusters of ``class_mapping``, pulled towards the attention output of the assigned
    class's region (``loss_prompt_token``, weight ``token_loss_weight``) and towards the
    sample's CLS query (``loss_prompt_cls``, weight ``cls_loss_weight``).

    Inference is mmseg's own: the guided branch only runs inside :meth:`loss`.

    Args:
        token_loss_weight: beta; cls_loss_weight: gamma. Both 0 → plain VPT-Deep.
        metric_loss: config of the metric loss (``ProxyAnchorLoss`` by default).
        token_pooling: ``'region'`` (the assigned class's patches) or ``'image'`` (all).
        background_classes: class indices never assigned (e.g. ``(0,)`` for PASCAL Context-60).
        class_representation: what the mapping clusters: ``'region'`` (mean last-block patch
            tokens of the class) or ``'cls'`` (the CLS token of images holding the class).
        embedding_pairing: which spaces the losses compare, a key of ``EMBEDDING_PAIRINGS``:
            ``'query-attention'`` (the paper), ``'key-query'`` (the attention's own space) or
            ``'input'`` (the authors' release).
        detach_data: the patch and CLS embeddings enter the metric losses without gradient,
            so the losses move the guided prompts only (and, in DA-VPT+, the guided block's
            k/v bias offsets where the prompt embedding depends on them). Otherwise the
            gradient also reaches every earlier block's prompts through the guided block's
            input, reshaping the features the decode head reads.
    """

    def __init__(self,
                 backbone: dict,
                 decode_head: dict,
                 token_loss_weight: float = 0.05,
                 cls_loss_weight: float = 0.05,
                 metric_loss: dict = dict(type='ProxyAnchorLoss', alpha=32., margin=0.1),
                 token_pooling: str = 'region',
                 background_classes: Sequence[int] = (),
                 class_representation: str = 'region',
                 embedding_pairing: str = 'query-attention',
                 detach_data: bool = False,
                 **kwargs):
        super().__init__(backbone=backbone, decode_head=decode_head, **kwargs)
        if token_pooling not in TOKEN_POOLINGS:
            raise ValueError(f'token_pooling={token_pooling!r} is not one of {TOKEN_POOLINGS}')
        if embedding_pairing not in EMBEDDING_PAIRINGS:
            raise ValueError(f'embedding_pairing={embedding_pairing!r} is not one of '
                             f'{tuple(EMBEDDING_PAIRINGS)}')
        num_classes = self.decode_head.num_classes
        for cls in background_classes:
            if not 0 <= cls < num_classes:
                raise ValueError(f'background class {cls} is outside [0, {num_classes})')
        self.token_loss_weight = token_loss_weight
        self.cls_loss_weight = cls_loss_weight
        self.token_pooling = token_pooling
        self.embedding_pairing = embedding_pairing
        self.detach_data = detach_data
        self.background_classes = tuple(background_classes)
        self.metric_loss = MODELS.build(metric_loss)

        num_guided = getattr(self.backbone, 'num_guided_prompts', 0)
        self.class_mapping: Optional[ClassPromptMapping] = None
        if num_guided:
            self.class_mapping = ClassPromptMapping(num_classes, num_guided,
                                                    self.backbone.embed_dim,
                                                    class_representation)
        self.with_guidance = self.class_mapping is not None and (
            token_loss_weight > 0 or cls_loss_weight > 0)

    # ------------------------------------------------------------------------ training
    def loss(self, inputs: torch.Tensor, data_samples: SampleList) -> dict:
        if not self.with_guidance:
            return super().loss(inputs, data_samples)
        feats, aux = self.backbone.forward_with_guidance(inputs)
        if self.with_neck:
            feats = self.neck(feats)
        losses = dict()
        losses.update(self._decode_head_forward_train(feats, data_samples))
        if self.with_auxiliary_head:
            losses.update(self._auxiliary_head_forward_train(feats, data_samples))
        losses.update(self._metric_losses(aux, data_samples))
        return losses

    def _metric_losses(self, aux: TrunkAuxiliary, data_samples: SampleList) -> dict:
        cell_labels = self.patch_cell_labels(data_samples, aux.hw_shape)
        if self.training:
            self.class_mapping.accumulate(*self.class_statistics(aux, cell_labels))
        classes, valid = self.assign_classes(cell_labels)
        prompt_labels = self.class_mapping(classes[valid])

        prompt_space, patch_space, cls_space = EMBEDDING_PAIRINGS[self.embedding_pairing]
        token_losses, cls_losses = [], []
        for block in aux.guided:
            patches, cls = block.patches[patch_space], block.cls[cls_space]
            if self.detach_data:
                patches, cls = patches.detach(), cls.detach()
            if self.token_pooling == 'region':
                region = (cell_labels == classes[:, None]).to(patches.dtype)
                tokens = torch.einsum('bn,bnc->bc', region, patches) / \
                    region.sum(1, keepdim=True).clamp(min=1)
            else:
                tokens = patches.mean(1)
            proxies = block.prompts[prompt_space]
            token_losses.append(self.metric_loss(tokens[valid], proxies, prompt_labels))
            cls_losses.append(self.metric_loss(cls[valid], proxies, prompt_labels))
        return dict(
            loss_prompt_token=self.token_loss_weight * torch.stack(token_losses).mean(),
            loss_prompt_cls=self.cls_loss_weight * torch.stack(cls_losses).mean())

    # -------------------------------------------------------------- labels on the token grid
    def patch_cell_labels(self, data_samples: SampleList,
                          hw_shape: Tuple[int, int]) -> torch.Tensor:
        """(B, H*W) majority label of every patch cell (``ignore_index`` where it dominates)."""
        labels = torch.stack([s.gt_sem_seg.data for s in data_samples])[:, 0]
        patch_h, patch_w = self.backbone.patch_size
        height, width = hw_shape[0] * patch_h, hw_shape[1] * patch_w
        # The backbone pads the image bottom/right to whole patches: pad the labels alike.
        labels = labels[:, :height, :width]
        labels = F.pad(labels, (0, width - labels.shape[-1], 0, height - labels.shape[-2]),
                       value=self.decode_head.ignore_index)
        cells = labels.reshape(-1, hw_shape[0], patch_h, hw_shape[1], patch_w)
        cells = cells.permute(0, 1, 3, 2, 4).reshape(labels.shape[0], -1, patch_h * patch_w)
        return cells.mode(dim=-1).values

    def _one_hot_classes(self, cell_labels: torch.Tensor,
                         exclude_background: bool) -> torch.Tensor:
        """(B, H*W, C) bool: cell holds class c (ignore and out-of-range labels dropped)."""
        num_classes = self.decode_head.num_classes
        eligible = (cell_labels >= 0) & (cell_labels < num_classes) & \
            (cell_labels != self.decode_head.ignore_index)
        if exclude_background and self.background_classes:
            eligible &= ~torch.isin(cell_labels,
                                    cell_labels.new_tensor(self.background_classes))
        safe = torch.where(eligible, cell_labels, torch.full_like(cell_labels, num_classes))
        return F.one_hot(safe, num_classes + 1)[..., :num_classes].bool()

    def assign_classes(self, cell_labels: torch.Tensor
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One class per sample, uniform among its eligible present classes.

        Returns ``(classes (B,), valid (B,))``; samples with no eligible class are invalid
        (their ``classes`` entry is meaningless) and take no part in the metric losses.
        """
        presence = self._one_hot_classes(cell_labels, exclude_background=True).any(dim=1)
        valid = presence.any(dim=1)
        weights = torch.where(valid[:, None], presence.float(), torch.ones_like(presence,
                                                                                 dtype=torch.float))
        return torch.multinomial(weights, 1).squeeze(1), valid

    @torch.no_grad()
    def class_statistics(self, aux: TrunkAuxiliary,
                         cell_labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-class sums and counts of the mapping's class representation for this batch.

        Every class present in an image contributes once per image: ``region`` its mean
        last-block patch token, ``cls`` the image's CLS token.
        """
        one_hot = self._one_hot_classes(cell_labels, exclude_background=False).float()
        present = one_hot.any(dim=1).float()  # (B, C)
        if self.class_mapping.representation == 'region':
            cells = one_hot.sum(dim=1)  # (B, C)
            region_sum = torch.einsum('bnc,bnd->bcd', one_hot, aux.last_patches.float())
            per_image = region_sum / cells.clamp(min=1)[..., None]
            return per_image.sum(dim=0), present.sum(dim=0)
        return present.t() @ aux.last_cls.float(), present.sum(dim=0)

    @torch.no_grad()
    def compute_class_statistics(self, inputs: torch.Tensor, data_samples: SampleList,
                                 use_prompts: bool = False
                                 ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Class statistics of one batch from a forward without gradients.

        ``use_prompts=False`` uses the bare pretrained trunk (the initial mapping).
        """
        _, aux = self.backbone.forward_with_guidance(inputs, use_prompts=use_prompts)
        return self.class_statistics(aux, self.patch_cell_labels(data_samples, aux.hw_shape))

    # ------------------------------------------------------------------------- reporting
    def trainable_parameter_counts(self) -> Dict[str, int]:
        counts = {}
        if hasattr(self.backbone, 'trainable_parameter_counts'):
            counts.update({f'backbone.{k}': v for k, v in
                           self.backbone.trainable_parameter_counts().items()})
        else:
            counts['backbone'] = _trainable(self.backbone)
        for name in ('neck', 'decode_head', 'auxiliary_head'):
            if getattr(self, name, None) is not None:
                counts[name] = _trainable(getattr(self, name))
        return counts

    def init_weights(self):
        super().init_weights()
        counts = self.trainable_parameter_counts()
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(counts.values())
        print_log(f'trainable parameters: {trainable:,} of {total:,} '
                  f'({100 * trainable / max(total, 1):.2f}%); ' +
                  ', '.join(f'{k}: {v:,}' for k, v in counts.items()),
                  logger='current')


def _trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
