"""How much of each prompt's gradient comes from the metric losses, and whether it agrees
with the segmentation gradient (docs/results/camvid.md, "Why DA-VPT lost";
``tools/analysis_tools/analyze_guidance.py``).

The metric losses reach a block's prompts through two paths: the guided block's own prompts
(the proxies), and, unless ``detach_data`` is set, every earlier block's prompts through the
guided block's input (the patch and CLS embeddings). If the metric gradient on a prompt is
much larger than the segmentation gradient and not aligned with it, that prompt is trained
for the metric objective, not for segmentation.
"""
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

import torch
import torch.nn.functional as F

METRIC_LOSSES = ('loss_prompt_token', 'loss_prompt_cls')


@dataclass
class GradientShare:
    """Gradient norms on one trainable backbone tensor, averaged over batches."""
    name: str
    segmentation: float  # |g| of the segmentation losses (decode + auxiliary heads)
    token: float  # |g| of the weighted token metric loss
    cls: float  # |g| of the weighted CLS metric loss
    cosine: float  # cosine(g_segmentation, g_token + g_cls); nan where either is zero

    @property
    def ratio(self) -> float:
        """|g_token + g_cls| bound: (|g_token| + |g_cls|) / |g_segmentation|."""
        return (self.token + self.cls) / self.segmentation if self.segmentation else \
            float('inf')


def _segmentation_loss(losses: Dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(v for k, v in losses.items()
               if 'loss' in k and k not in METRIC_LOSSES and isinstance(v, torch.Tensor))


def guidance_gradient_shares(model, batches: Iterable[dict]) -> List[GradientShare]:
    """Per trainable backbone tensor: segmentation vs metric gradient, mean over ``batches``.

    ``batches`` are data-loader outputs; ``model`` a DAVPTEncoderDecoder with guidance,
    in the state to analyse (train mode: dropout and statistics as in training).
    """
    params = {name: p for name, p in model.backbone.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError('the backbone has no trainable tensors: nothing to analyse')
    sums: Dict[str, List[float]] = {name: [0., 0., 0., 0., 0] for name in params}
    count = 0
    for data in batches:
        data = model.data_preprocessor(data, True)
        losses = model.loss(data['inputs'], data['data_samples'])
        missing = [k for k in METRIC_LOSSES if k not in losses]
        if missing:
            raise ValueError(f'the model returns no {missing}: analyse a DA-VPT model with '
                             'guided blocks and non-zero metric-loss weights')
        parts = {'segmentation': _segmentation_loss(losses),
                 'token': losses['loss_prompt_token'], 'cls': losses['loss_prompt_cls']}
        grads = {}
        for part, loss in parts.items():
            values = torch.autograd.grad(loss, list(params.values()), retain_graph=True,
                                         allow_unused=True)
            grads[part] = [torch.zeros_like(p) if g is None else g
                           for p, g in zip(params.values(), values)]
        for index, name in enumerate(params):
            seg, tok, cls = (grads[p][index].flatten() for p in ('segmentation', 'token',
                                                                 'cls'))
            metric = tok + cls
            row = sums[name]
            row[0] += seg.norm().item()
            row[1] += tok.norm().item()
            row[2] += cls.norm().item()
            if seg.norm() > 0 and metric.norm() > 0:
                row[3] += F.cosine_similarity(seg, metric, dim=0).item()
                row[4] += 1
        count += 1
    if not count:
        raise ValueError('no batches to analyse')
    shares = [GradientShare(name, row[0] / count, row[1] / count, row[2] / count,
                            row[3] / row[4] if row[4] else float('nan'))
              for name, row in sums.items()]
    return sorted(shares, key=lambda s: _natural_key(s.name))


def _natural_key(name: str):
    """'prompts.10' after 'prompts.9' (ParameterDict keys are strings)."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)]


def analyze_config(cfg, checkpoint: Optional[str] = None, batches: int = 4,
                   init_batches: Optional[int] = None, seed: int = 0) -> List[GradientShare]:
    """:func:`guidance_gradient_shares` of ``cfg``'s model over its first ``batches``
    training batches: the state training starts from (pretrained trunk, fresh prompts, the
    initial k-means mapping over ``init_batches`` batches, default the hook's), or the
    trained state of ``checkpoint``."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.runner import Runner, load_checkpoint
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    from davpt_seg.datasets import check_data_cfg
    from davpt_seg.engine.hooks import ClassPromptMappingHook
    check_data_cfg(cfg, ('train', ), 'off')
    torch.manual_seed(seed)
    register_all_modules()
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.init_weights()
    loader_cfg = dict(cfg.train_dataloader, num_workers=0, persistent_workers=False)
    loader = Runner.build_dataloader(loader_cfg, seed=seed)
    if checkpoint:
        load_checkpoint(model, checkpoint, map_location='cpu')
    if getattr(model, 'class_prompt_mapping', None) is None:
        raise ValueError('the config has no guided blocks (model.backbone.guided_blocks): '
                         'there are no metric losses to analyse')
    if not bool(model.class_prompt_mapping.initialized):
        if init_batches is None:
            hooks = [h for h in cfg.get('custom_hooks', [])
                     if h['type'] == 'ClassPromptMappingHook']
            init_batches = hooks[0].get('init_batches') if hooks else None
        print(ClassPromptMappingHook(init_batches=init_batches).initial_mapping(
            model, loader).summary())
    model.train()
    return guidance_gradient_shares(model, (batch for _, batch in zip(range(batches), loader)))
