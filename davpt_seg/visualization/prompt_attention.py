"""Prompt → patch attention maps of a PromptedViT (the DA-VPT paper's figure 3).

The model never materialises attention maps (its blocks run SDPA). This module captures a
block's *input* with a forward pre-hook during an ordinary forward and recomputes, outside
the model, the attention rows of the tokens of interest (CLS and the prompts) from that
input with the block's own LayerNorm and its attention's ``heads`` (qkv projection, k/v
bias offsets and q/k norms included): the very logits SDPA softmaxes. Training and inference
pay nothing for it.
"""
import math
import os
import os.path as osp
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


SOFTMAX_OVER = ('all', 'patches')


@dataclass
class BlockAttention:
    """Attention of CLS and some prompts of one block over the patch grid (one image)."""
    block_index: int
    prompt_indices: List[int]  # index of each prompt within the block's prompts
    prompt_maps: torch.Tensor  # (P, h, w), averaged over heads
    cls_map: torch.Tensor  # (h, w)
    hw_shape: Tuple[int, int]


@contextmanager
def capture_block_inputs(backbone, blocks: Sequence[int]) -> Iterator[Dict[int, torch.Tensor]]:
    """Records the input sequence of each listed trunk block during forwards in the body.

    The last forward wins (the caller runs one); hooks are removed on exit.
    """
    captured: Dict[int, torch.Tensor] = {}
    handles = []
    for index in blocks:
        def hook(module, args, index=index):
            captured[index] = args[0].detach()
        handles.append(backbone.trunk.blocks[index].register_forward_pre_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def attention_rows(block, x: torch.Tensor, rows: Sequence[int],
                   softmax_over: str = 'all', key_start: int = 0) -> torch.Tensor:
    """(B, heads, len(rows), L - key_start) attention of token ``rows`` over the keys from
    ``key_start`` on, as the block's attention computes it.

    ``softmax_over='all'``: the real attention weights (softmax over every key, then the
    columns from ``key_start``); ``'patches'``: a softmax over those columns only.
    """
    if softmax_over not in SOFTMAX_OVER:
        raise ValueError(f'softmax_over={softmax_over!r} is not one of {SOFTMAX_OVER}')
    q, k, _ = block.attn.heads(block.norm1(x))
    logits = (q[:, :, list(rows)] * block.attn.scale) @ k.transpose(-2, -1)
    if softmax_over == 'all':
        return logits.float().softmax(-1)[..., key_start:]
    return logits[..., key_start:].float().softmax(-1)


@torch.no_grad()
def prompt_attention_maps(backbone, block_index: int, x: torch.Tensor, hw_shape: Tuple[int, int],
                     prompt_indices: Optional[Sequence[int]] = None,
                     softmax_over: str = 'all') -> BlockAttention:
    """CLS and prompt attention over the patches of block ``block_index`` for image 0 of the
    captured input ``x`` (patch grid ``hw_shape``); ``prompt_indices`` default: the guided
    prompts of a guided block, else all the block's prompts."""
    if not backbone.with_cls_token:
        raise ValueError('the backbone runs without a CLS token (with_cls_token=False or a '
                         'trunk without one), so there is no CLS attention map to draw')
    prefix = backbone.num_prefix
    count = backbone.prompt_counts[block_index]
    if prompt_indices is None:
        guided = block_index in backbone.guided_blocks
        prompt_indices = range(backbone.num_guided_prompts if guided else count)
    prompt_indices = list(prompt_indices)
    if any(not 0 <= i < count for i in prompt_indices):
        raise IndexError(f'block {block_index} holds {count} prompts; asked for '
                         f'{prompt_indices}')
    height, width = hw_shape
    if x.shape[1] != prefix + count + height * width:
        raise ValueError(f'block {block_index} input has {x.shape[1]} tokens, not {prefix} '
                         f'prefix + {count} prompts + {height}x{width} patches: wrong hw_shape')
    rows = [0] + [prefix + i for i in prompt_indices]
    weights = attention_rows(backbone.trunk.blocks[block_index], x[:1], rows, softmax_over,
                             key_start=prefix + count)[0].mean(0)  # (R, N)
    maps = weights.reshape(len(rows), height, width).cpu()
    return BlockAttention(block_index, prompt_indices, maps[1:], maps[0], (height, width))


# ------------------------------------------------------------------------------ labels
def prompt_class_names(class_to_prompt: torch.Tensor, class_names: Sequence[str]
                       ) -> Dict[int, List[str]]:
    """Prompt index → names of the classes mapped to it."""
    covered: Dict[int, List[str]] = {}
    for cls, prompt in enumerate(class_to_prompt.tolist()):
        name = class_names[cls] if cls < len(class_names) else f'class {cls}'
        covered.setdefault(int(prompt), []).append(name)
    return covered


def panel_title(prompt: int, names: List[str], present: Sequence[str] = (),
                max_names: int = 4, width: int = 34) -> str:
    """``prompt k: a*, b, c +n`` wrapped to two lines; ``*``: in the prediction."""
    ordered = [n for n in names if n in present] + [n for n in names if n not in present]
    shown = [n + ('*' if n in present else '') for n in ordered[:max_names]]
    more = f' +{len(ordered) - max_names}' if len(ordered) > max_names else ''
    text = f'prompt {prompt}: ' + ', '.join(shown) + more
    if len(text) <= width:
        return text
    cut = text.rfind(', ', 0, width)
    cut = width if cut < 0 else cut + 1
    second = text[cut:].strip()
    return text[:cut].rstrip() + '\n' + (second[:width - 1] + '…' if len(second) > width
                                         else second)


# ----------------------------------------------------------------------------- drawing
TITLE_PX = 40  # band above each panel for its (two-line) title
FOOTER_PX = 14  # one line under the panels for the figure's note


def figure_pixel_size(num_panels: int, panel_size: Tuple[int, int], cols: int
                      ) -> Tuple[int, int]:
    """(width, height) in pixels of the figure :func:`render_figure` writes."""
    cols = max(1, min(cols, num_panels))
    rows = math.ceil(num_panels / cols)
    return cols * panel_size[0], rows * (panel_size[1] + TITLE_PX) + FOOTER_PX


def panel_size_for(image_hw: Tuple[int, int], panel_height: int) -> Tuple[int, int]:
    height, width = image_hw
    return max(1, round(panel_height * width / height)), panel_height


def upsample_map(attention: torch.Tensor, patch_size: Tuple[int, int],
                 valid_hw: Tuple[int, int], out_hw: Tuple[int, int]) -> np.ndarray:
    """(h, w) patch-grid map → (H, W) in [0, 1] over the unpadded image, resized."""
    grid = attention[None, None].float()
    full = F.interpolate(grid, scale_factor=patch_size, mode='bilinear', align_corners=False)
    full = full[..., :valid_hw[0], :valid_hw[1]]
    out = F.interpolate(full, size=out_hw, mode='bilinear', align_corners=False)[0, 0]
    low, high = out.min(), out.max()
    return ((out - low) / (high - low).clamp(min=1e-12)).numpy()


def colourise(labels: np.ndarray, palette: Optional[Sequence[Sequence[int]]],
              num_classes: int) -> np.ndarray:
    if palette is None or len(palette) < num_classes:
        rng = np.random.default_rng(0)
        palette = rng.integers(0, 255, (num_classes, 3))
    palette = np.asarray(palette, dtype=np.uint8)
    out = np.zeros(labels.shape + (3, ), np.uint8)
    valid = (labels >= 0) & (labels < len(palette))
    out[valid] = palette[labels[valid]]
    return out


def render_figure(out_path: str, image_rgb: np.ndarray, panels: List[Tuple[str, np.ndarray]],
                  panel_height: int = 256, cols: int = 6, suptitle: Optional[str] = None):
    """Writes the panels (title, HxWx3 uint8 already at panel size or any size) as a PNG of
    exactly :func:`figure_pixel_size` pixels."""
    # A bare Agg canvas: no pyplot state, and the caller's matplotlib backend is untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panel_w, panel_h = panel_size_for(image_rgb.shape[:2], panel_height)
    cols = max(1, min(cols, len(panels)))
    width, height = figure_pixel_size(len(panels), (panel_w, panel_h), cols)
    dpi = 100
    # +0.5 px: Agg truncates the float figure size, which would lose a pixel at random.
    fig = Figure(figsize=((width + .5) / dpi, (height + .5) / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    for index, (title, pixels) in enumerate(panels):
        row, col = divmod(index, cols)
        left = col * panel_w / width
        bottom = 1 - ((row + 1) * (panel_h + TITLE_PX)) / height
        ax = fig.add_axes([left, bottom, panel_w / width, panel_h / height])
        ax.imshow(pixels, interpolation='bilinear')
        ax.set_axis_off()
        ax.text(0.5, 1 + 3 / panel_h, title, transform=ax.transAxes, ha='center',
                va='bottom', fontsize=7.5, linespacing=1.1)
    if suptitle:
        fig.text(0.995, 2 / height, suptitle, ha='right', va='bottom', fontsize=6.5,
                 color='0.35')
    fig.savefig(out_path, dpi=dpi)
    return width, height


def overlay(image_rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    from matplotlib import colormaps
    coloured = colormaps['jet'](heat)[..., :3] * 255
    return ((1 - alpha) * image_rgb + alpha * coloured).clip(0, 255).astype(np.uint8)


def draw_prompt_attention(model, cfg, image_path: str, out: str,
                          blocks: Optional[Sequence[int]] = None, softmax_over: str = 'all',
                          only_present: bool = False, panel_size: int = 256, cols: int = 6,
                          checkpoint_name: str = '') -> dict:
    """The figure of ``tools/analysis_tools/visualize_prompt_attention.py`` for one image:
    the image, the prediction, the CLS attention and, for each of ``blocks`` (default: the
    guided blocks), every prompt's attention over the patches, titled with the classes it
    stands for. Writes the PNG ``out``; returns its size, the panel titles, the raw maps and
    the prediction. Raises ``ValueError`` for blocks without prompts."""
    import mmcv

    from ..deploy import inference_pipeline
    load, prepare = inference_pipeline(cfg)
    backbone = model.backbone
    blocks = list(blocks) if blocks else list(backbone.guided_blocks)
    if not blocks:
        raise ValueError('the model has no guided blocks (model.backbone.guided_blocks=()); '
                         'pass --blocks to see the plain prompts of some blocks')
    for block in blocks:
        if not 0 <= block < backbone.depth or not backbone.prompt_counts[block]:
            raise ValueError(f'block {block} has no prompts (prompts per block: '
                             f'{backbone.prompt_counts})')

    loaded = load(dict(img_path=image_path))
    image_bgr = loaded['img']
    data = prepare(loaded)
    batch = dict(inputs=[data['inputs']], data_samples=[data['data_samples']])
    with torch.no_grad():
        prediction = model.test_step(batch)[0].pred_sem_seg.data[0].cpu().numpy()
        # The maps come from one whole-image backbone pass on the same preprocessed input
        # (a sliding-window prediction would split the image into crops).
        inputs = model.data_preprocessor(batch, False)['inputs']
        with capture_block_inputs(backbone, blocks) as captured:
            backbone(inputs)
    patch_h, patch_w = backbone.patch_size
    hw_shape = (math.ceil(inputs.shape[-2] / patch_h), math.ceil(inputs.shape[-1] / patch_w))
    valid_hw = tuple(data['data_samples'].img_shape)

    num_classes = model.decode_head.num_classes
    class_names, palette = list(model.dataset_meta['classes']), model.dataset_meta['palette']
    present = {class_names[c] for c in np.unique(prediction) if 0 <= c < len(class_names)}
    mapping = getattr(model, 'class_prompt_mapping', None)
    covered = prompt_class_names(mapping.class_to_prompt.cpu(), class_names) \
        if mapping is not None else {}

    image_rgb = image_bgr[..., ::-1]
    panel_w, panel_h = panel_size_for(image_rgb.shape[:2], panel_size)
    small = mmcv.imresize(np.ascontiguousarray(image_rgb), (panel_w, panel_h))
    pred_small = mmcv.imresize(prediction.astype(np.int32), (panel_w, panel_h),
                               interpolation='nearest')
    panels = [('image', small),
              ('prediction', (0.4 * small + 0.6 * colourise(pred_small, palette,
                                                            num_classes)).astype(np.uint8))]
    raw_maps = {}
    for block in blocks:
        guided = block in backbone.guided_blocks
        result = prompt_attention_maps(backbone, block, captured[block], hw_shape,
                                       softmax_over=softmax_over)
        heat = upsample_map(result.cls_map, (patch_h, patch_w), valid_hw, (panel_h, panel_w))
        panels.append((f'block {block}: CLS', overlay(small, heat)))
        raw_maps[f'block{block}_cls'] = result.cls_map.numpy()
        for prompt, attention in zip(result.prompt_indices, result.prompt_maps):
            names = covered.get(prompt, []) if guided else []
            if guided and not names:
                continue  # a prompt no class maps to carries no class meaning
            if only_present and not present.intersection(names):
                continue
            title = panel_title(prompt, names, present) if guided else \
                f'block {block}, prompt {prompt}'
            if guided and len(blocks) > 1:
                title = f'b{block} ' + title
            heat = upsample_map(attention, (patch_h, patch_w), valid_hw, (panel_h, panel_w))
            panels.append((title, overlay(small, heat)))
            raw_maps[f'block{block}_prompt{prompt}'] = attention.numpy()

    note = f'{checkpoint_name} · softmax over {softmax_over} keys · * in prediction'
    if mapping is not None and not bool(mapping.initialized):
        note += ' · mapping not clustered yet (class c → prompt c mod M)'
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    size = render_figure(out, small, panels, panel_size, cols, note)
    return dict(out=out, size=size, panels=[t for t, _ in panels], maps=raw_maps,
                prediction=prediction)
