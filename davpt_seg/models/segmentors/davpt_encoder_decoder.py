"""mmseg's EncoderDecoder plus DA-VPT's metric losses between guided prompts and the data."""
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.utils import SampleList

from ...checkpoint.layout import upgrade_legacy_keys
from ..backbones.prompted_vit import TrunkAuxiliary
from ..class_prompt_mapping import ClassPromptMapping

TOKEN_POOLINGS = ('region', 'image')
# Which (image, class) pairs feed the metric losses at each iteration.
CLASS_ASSIGNMENTS = (
    'random',  # the paper's: one class per image, uniform among its present classes
    'all',  # every present class of every image
)

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
# Arguments of davpt-seg 0.1 that the metric-loss configs replaced.
_REPLACED_ARGUMENTS = {
    'token_loss_weight': 'loss_prompt_token=dict(type=\'ProxyAnchorLoss\', loss_weight=...)',
    'cls_loss_weight': 'loss_prompt_cls=dict(type=\'ProxyAnchorLoss\', loss_weight=...)',
    'metric_loss': 'the ProxyAnchorLoss arguments inside loss_prompt_token / loss_prompt_cls',
}


class _BackboneFeatures(tuple):
    """Feature maps that the backbone already computed (with the guided blocks' outputs);
    :meth:`DAVPTEncoderDecoder.extract_feat` passes them on instead of running it again."""


@MODELS.register_module()
class DAVPTEncoderDecoder(EncoderDecoder):
    """EncoderDecoder whose training loss adds DA-VPT's two Proxy-Anchor terms.

    At every training iteration each sample is assigned one class drawn uniformly among the
    classes present in its label map (a class is present when it is the majority label of at
    least one patch cell; ``ignore_index`` and ``background_classes`` never count). In every
    guided block of the backbone, the guided prompts' queries act as proxies for the class
    clusters of ``class_prompt_mapping``, pulled towards the attention output of the assigned
    class's region (``loss_prompt_token``) and towards the sample's CLS query
    (``loss_prompt_cls``). The losses are averaged over the guided blocks.

    The segmentation losses are ``EncoderDecoder.loss``'s own, on the same forward;
    inference is mmseg's own: the guided branch only runs inside :meth:`loss`.

    Args:
        loss_prompt_token: config of the token metric loss (``ProxyAnchorLoss`` with
            ``loss_weight`` beta and ``loss_name``), or ``None``.
        loss_prompt_cls: the same for the CLS metric loss (gamma), or ``None``. A backbone
            with guided blocks needs at least one of the two; one without needs neither.
        token_pooling: ``'region'`` (the assigned class's patches) or ``'image'`` (all).
        background_classes: class indices never assigned (e.g. ``(0,)`` for PASCAL Context-60).
        class_representation: what the mapping clusters: ``'region'`` (mean last-block patch
            tokens of the class) or ``'cls'`` (the CLS token of images holding the class).
        class_assignment: ``'random'`` (the paper's one class per image and iteration) or
            ``'all'`` (every present class of every image is a data point).
        embedding_pairing: which spaces the losses compare, a key of ``EMBEDDING_PAIRINGS``:
            ``'query-attention'`` (the paper), ``'key-query'`` (the attention's own space) or
            ``'input'`` (the authors' release).
        detach_data: the patch and CLS embeddings enter the metric losses without gradient,
            so the losses move the guided prompts only (and, in DA-VPT+, the guided block's
            k/v bias offsets where the prompt embedding depends on them). Otherwise the
            gradient also reaches every earlier block's prompts through the guided block's
            input, reshaping the features the decode head reads.
        compile_regions: ``torch.compile`` the model's repeated and full-resolution regions
            (``True``, or a dict of ``torch.compile`` arguments; default ``False``): every
            backbone block (one graph serves all blocks of a shape; the guided block's
            forward with its embeddings stays eager) and each decode / auxiliary head's
            forward and loss (FastSETRUPHead: ``loss_by_labels``, where the cross-entropy
            reads the bf16 logits in one fused pass instead of materialising fp32 copies;
            other heads: ``loss_by_feat``). The step's Python (data samples,
            class assignment, metric losses) stays eager, so nothing breaks the graphs.
            Static shapes unless the dict says otherwise. The first iterations compile.
    """

    def __init__(self,
                 backbone: dict,
                 decode_head: dict,
                 loss_prompt_token: Optional[dict] = None,
                 loss_prompt_cls: Optional[dict] = None,
                 token_pooling: str = 'region',
                 background_classes: Sequence[int] = (),
                 class_representation: str = 'region',
                 class_assignment: str = 'random',
                 embedding_pairing: str = 'query-attention',
                 detach_data: bool = False,
                 compile_regions: Union[bool, dict] = False,
                 **kwargs):
        replaced = sorted(set(kwargs) & set(_REPLACED_ARGUMENTS))
        if replaced:
            raise TypeError(f'DAVPTEncoderDecoder: {replaced} were replaced by loss configs, '
                            'as mmseg configures its losses: ' +
                            '; '.join(f'{k} -> {_REPLACED_ARGUMENTS[k]}' for k in replaced))
        super().__init__(backbone=backbone, decode_head=decode_head, **kwargs)
        for name, value, choices in (
                ('token_pooling', token_pooling, TOKEN_POOLINGS),
                ('class_assignment', class_assignment, CLASS_ASSIGNMENTS),
                ('embedding_pairing', embedding_pairing, tuple(EMBEDDING_PAIRINGS))):
            if value not in choices:
                raise ValueError(f'{name}={value!r} is not one of {choices}')
        num_classes = self.decode_head.num_classes
        for cls in background_classes:
            if not 0 <= cls < num_classes:
                raise ValueError(f'background class {cls} is outside [0, {num_classes})')
        self.token_pooling = token_pooling
        self.class_assignment = class_assignment
        self.embedding_pairing = embedding_pairing
        self.detach_data = detach_data
        self.background_classes = tuple(background_classes)
        # A device tensor made once: building it per step would copy it to the device.
        background = torch.zeros(num_classes, dtype=torch.bool)
        background[list(self.background_classes)] = True
        self.register_buffer('_background', background, persistent=False)

        guided_blocks = tuple(getattr(self.backbone, 'guided_blocks', ()))
        losses = {role: MODELS.build(cfg) for role, cfg in (
            ('loss_prompt_token', loss_prompt_token), ('loss_prompt_cls', loss_prompt_cls))
            if cfg is not None}
        if losses and not guided_blocks:
            raise ValueError(
                f'{sorted(losses)} are set, but the backbone has no guided blocks '
                '(model.backbone.guided_blocks=()) whose prompts they could train: set '
                'guided_blocks (DA-VPT), or loss_prompt_token=None and loss_prompt_cls=None '
                '(VPT-Deep)')
        if guided_blocks and not losses:
            raise ValueError(
                f'model.backbone.guided_blocks={guided_blocks}, but neither loss_prompt_token '
                'nor loss_prompt_cls is set, so nothing would guide those prompts: set the '
                'metric losses, or guided_blocks=() for plain VPT-Deep')
        names = [loss.loss_name for loss in losses.values()]
        if len(set(names)) != len(names):
            raise ValueError(f'loss_prompt_token and loss_prompt_cls share loss_name '
                             f'{names[0]!r}: give each its own (their logs would merge)')
        self.loss_prompt_token = losses.get('loss_prompt_token')
        self.loss_prompt_cls = losses.get('loss_prompt_cls')

        self.class_prompt_mapping: Optional[ClassPromptMapping] = None
        if guided_blocks:
            self.class_prompt_mapping = ClassPromptMapping(
                num_classes, self.backbone.num_guided_prompts, self.backbone.embed_dim,
                class_representation)
        self.with_guidance = bool(guided_blocks)
        if compile_regions:
            self._compile_regions({} if compile_regions is True else dict(compile_regions))

    def _compile_regions(self, options: dict) -> None:
        options.setdefault('dynamic', False)
        backbone = self.backbone
        blocks = backbone.trunk.blocks if hasattr(backbone, 'trunk') else \
            getattr(backbone, 'layers', ())
        for block in blocks:
            block.compile(**options)
        heads = [self.decode_head]
        if self.with_auxiliary_head:
            heads += list(self.auxiliary_head) if isinstance(
                self.auxiliary_head, torch.nn.ModuleList) else [self.auxiliary_head]
        for head in heads:
            head.compile(**options)
            # Tensors only (FastSETRUPHead's loss_by_labels): a graph over the data samples
            # would guard on each sample's label tensor, and real batches, whose labels come
            # padded or not, would recompile it until torch gives up. An instance
            # attribute: the class's method stays as it is for other heads.
            target = 'loss_by_labels' if hasattr(head, 'loss_by_labels') else 'loss_by_feat'
            setattr(head, target, torch.compile(getattr(head, target), **options))

    # ------------------------------------------------------------------------ training
    def loss(self, inputs: torch.Tensor, data_samples: SampleList) -> dict:
        if not self.with_guidance:
            return super().loss(inputs, data_samples)
        feats, aux = self.backbone.forward_with_guidance(inputs)
        losses = super().loss(_BackboneFeatures(feats), data_samples)
        losses.update(self.prompt_losses(aux, data_samples))
        return losses

    def extract_feat(self, inputs):
        if isinstance(inputs, _BackboneFeatures):  # from loss(): the backbone already ran
            return self.neck(tuple(inputs)) if self.with_neck else tuple(inputs)
        return super().extract_feat(inputs)

    def prompt_losses(self, aux: TrunkAuxiliary, data_samples: SampleList) -> dict:
        """The metric losses of one training batch, keyed by their ``loss_name``; also adds
        the batch's class statistics to the mapping's (training only)."""
        return self.prompt_losses_on_cells(
            aux, self.patch_cell_labels(data_samples, aux.hw_shape))

    def prompt_losses_on_cells(self, aux: TrunkAuxiliary, cell_labels: torch.Tensor) -> dict:
        """:meth:`prompt_losses` given the patch cells' labels (B, H*W).

        Tensor ops only, with shapes that do not depend on the data: the step never waits
        for the device here, and ``torch.compile(fullgraph=True)`` traces it whole.
        """
        if self.training:
            self.class_prompt_mapping.accumulate(*self.class_statistics(aux, cell_labels))
        pairs = self.assigned_pairs(cell_labels)  # (B, C) bool: the losses' data points
        classes = torch.arange(pairs.shape[1], device=pairs.device).expand_as(pairs)
        prompt_labels = self.class_prompt_mapping(classes).flatten()
        valid = pairs.flatten()

        prompt_space, patch_space, cls_space = EMBEDDING_PAIRINGS[self.embedding_pairing]
        terms = {loss.loss_name: [] for loss in (self.loss_prompt_token,
                                                 self.loss_prompt_cls) if loss is not None}
        for block in aux.guided:
            patches, cls = block.patches[patch_space], block.cls[cls_space]
            if self.detach_data:
                patches, cls = patches.detach(), cls.detach()
            proxies = block.prompts[prompt_space]
            if self.loss_prompt_token is not None:
                tokens = self._pool_tokens(patches, cell_labels, pairs)  # (B, C, width)
                terms[self.loss_prompt_token.loss_name].append(self.loss_prompt_token(
                    tokens.flatten(0, 1), proxies, prompt_labels, valid))
            if self.loss_prompt_cls is not None:
                cls_points = cls[:, None].expand(-1, pairs.shape[1], -1)
                terms[self.loss_prompt_cls.loss_name].append(self.loss_prompt_cls(
                    cls_points.flatten(0, 1), proxies, prompt_labels, valid))
        return {name: torch.stack(values).mean() for name, values in terms.items()}

    def _pool_tokens(self, patches: torch.Tensor, cell_labels: torch.Tensor,
                     pairs: torch.Tensor) -> torch.Tensor:
        """(B, C, width) float32: each class's mean patch embedding in each image
        (``region``), or the image's mean embedding for every class (``image``); rows of
        pairs that are not data points are whatever the pooling gives and are masked by the
        loss. Float32 with autocast disabled, as the loss computes (ProxyAnchorLoss)."""
        with torch.autocast(device_type=patches.device.type, enabled=False):
            patches = patches.float()
            if self.token_pooling == 'image':
                return patches.mean(1)[:, None].expand(-1, pairs.shape[1], -1)
            region = self._one_hot_classes(cell_labels, exclude_background=False).float()
            # Weights that sum to one per class: the pooled token is a mean, never a sum.
            weights = region / region.sum(dim=1, keepdim=True).clamp(min=1)  # (B, N, C)
            return torch.einsum('bnc,bnd->bcd', weights, patches)

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
        safe = torch.where(eligible, cell_labels, torch.full_like(cell_labels, num_classes))
        one_hot = F.one_hot(safe, num_classes + 1)[..., :num_classes].bool()
        if exclude_background and self.background_classes:
            one_hot &= ~self._background
        return one_hot

    def present_classes(self, cell_labels: torch.Tensor) -> torch.Tensor:
        """(B, C) bool: the classes each image may be assigned (present, not background)."""
        return self._one_hot_classes(cell_labels, exclude_background=True).any(dim=1)

    def assign_classes(self, cell_labels: torch.Tensor
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One class per sample, uniform among its eligible present classes.

        Returns ``(classes (B,), valid (B,))``; samples with no eligible class are invalid
        (their ``classes`` entry is meaningless) and take no part in the metric losses.
        """
        presence = self.present_classes(cell_labels)
        # The largest of independent uniform draws is uniform among the present classes:
        # one tensor op, where torch.multinomial would wait for the device.
        draws = torch.rand(presence.shape, device=presence.device).masked_fill(~presence, -1.)
        return draws.argmax(dim=1), presence.any(dim=1)

    def assigned_pairs(self, cell_labels: torch.Tensor) -> torch.Tensor:
        """(B, C) bool: the (image, class) pairs that are the metric losses' data points at
        this iteration, per ``class_assignment``."""
        if self.class_assignment == 'all':
            return self.present_classes(cell_labels)
        classes, valid = self.assign_classes(cell_labels)
        num_classes = self.decode_head.num_classes
        return F.one_hot(classes, num_classes).bool() & valid[:, None]

    @torch.no_grad()
    def class_statistics(self, aux: TrunkAuxiliary,
                         cell_labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-class sums and counts of the mapping's class representation for this batch.

        Every class present in an image contributes once per image: ``region`` its mean
        last-block patch token, ``cls`` the image's CLS token. Float32 with autocast
        disabled: under mixed precision these sums would be half precision, and an
        overflow to inf would reach the mapping's statistics (NaN class means at the next
        re-clustering).
        """
        with torch.autocast(device_type=aux.last_patches.device.type, enabled=False):
            one_hot = self._one_hot_classes(cell_labels, exclude_background=False).float()
            present = one_hot.any(dim=1).float()  # (B, C)
            if self.class_prompt_mapping.representation == 'region':
                weights = one_hot / one_hot.sum(dim=1, keepdim=True).clamp(min=1)
                per_image = torch.einsum('bnc,bnd->bcd', weights, aux.last_patches.float())
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

    # ---------------------------------------------------------------------- checkpoints
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        upgrade_legacy_keys(state_dict, prefix)  # davpt-seg 0.1 checkpoints
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
