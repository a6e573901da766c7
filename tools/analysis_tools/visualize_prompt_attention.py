# Prompt attention maps (the DA-VPT paper's figure 3) for one image:
#
#   python tools/analysis_tools/visualize_prompt_attention.py CONFIG CHECKPOINT IMAGE \
#       --out maps.png
#
# The PNG holds the image, the prediction, the CLS token's attention and, for every guided
# block, the attention of each class-assigned guided prompt over the patches, titled with
# the classes that prompt stands for (``*``: the class is in the prediction). The checkpoint
# may be a full training checkpoint or a trainable-only export (tools/misc/export_trainable.py).
# The maps are recomputed here from the captured block input: the model's own forward never
# builds an attention map.
import argparse
import math
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from harness.entry import quiet_third_party_warnings  # noqa: E402

quiet_third_party_warnings()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='DA-VPT prompt attention maps')
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='full or trainable-only checkpoint')
    parser.add_argument('image')
    parser.add_argument('--out', required=True, help='output PNG')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--blocks', type=int, nargs='+',
                        help='blocks to show (default: the guided blocks); in a block that '
                        'is not guided every prompt is shown, without class labels')
    parser.add_argument('--softmax-over', default='all', choices=['all', 'patches'],
                        help="'all': the real attention weights (softmax over every key) "
                        "restricted to the patches; 'patches': softmax over the patches only")
    parser.add_argument('--only-present', action='store_true',
                        help='only prompts that cover a class present in the prediction')
    parser.add_argument('--panel-size', type=int, default=256, help='panel height (px)')
    parser.add_argument('--cols', type=int, default=6)
    parser.add_argument('--save-maps', help='also write the raw maps as .npz')
    return parser.parse_args(argv)


def load_model(config_path, checkpoint_path, device='cpu'):
    """The segmentor of ``config_path`` with ``checkpoint_path`` loaded (full or
    trainable-only) on ``device``, in eval mode; returns (model, cfg)."""
    from davpt_seg.deploy import load_config, load_segmentor
    cfg = load_config(config_path)
    model, _ = load_segmentor(cfg, checkpoint_path, device)
    if not hasattr(model.backbone, 'prompt_counts'):
        raise TypeError(f'{config_path}: the backbone is a {type(model.backbone).__name__}; '
                        'prompt attention maps need the PromptedViT backbone')
    return model, cfg


def main(argv=None):
    args = parse_args(argv)
    import mmcv
    import numpy as np
    import torch

    from davpt_seg.deploy import InputError, inference_pipeline
    from davpt_seg.visualization import prompt_attention as pa
    if not osp.isfile(args.image):
        sys.exit(f'error: image {args.image!r} does not exist')
    try:
        model, cfg = load_model(args.config, args.checkpoint, args.device)
        load, prepare = inference_pipeline(cfg, config_name=args.config)
    except InputError as error:
        sys.exit(f'error: {error}')
    backbone = model.backbone
    blocks = args.blocks if args.blocks else list(backbone.guided_blocks)
    if not blocks:
        sys.exit('error: the model has no guided blocks (model.backbone.guided_blocks=()); '
                 'pass --blocks to see the plain prompts of some blocks')
    for block in blocks:
        if not 0 <= block < backbone.depth or not backbone.prompt_counts[block]:
            sys.exit(f'error: block {block} has no prompts (prompts per block: '
                     f'{backbone.prompt_counts})')

    loaded = load(dict(img_path=args.image))
    image_bgr = loaded['img']
    data = prepare(loaded)
    batch = dict(inputs=[data['inputs']], data_samples=[data['data_samples']])
    with torch.no_grad():
        prediction = model.test_step(batch)[0].pred_sem_seg.data[0].cpu().numpy()
        # The maps come from one whole-image backbone pass on the same preprocessed input
        # (a sliding-window prediction would split the image into crops).
        inputs = model.data_preprocessor(batch, False)['inputs']
        with pa.capture_block_inputs(backbone, blocks) as captured:
            backbone(inputs)
    patch_h, patch_w = backbone.patch_size
    hw_shape = (math.ceil(inputs.shape[-2] / patch_h), math.ceil(inputs.shape[-1] / patch_w))
    valid_hw = tuple(data['data_samples'].img_shape)

    num_classes = model.decode_head.num_classes
    class_names, palette = list(model.dataset_meta['classes']), model.dataset_meta['palette']
    present = {class_names[c] for c in np.unique(prediction) if 0 <= c < len(class_names)}
    mapping = getattr(model, 'class_prompt_mapping', None)
    covered = pa.prompt_class_names(mapping.class_to_prompt.cpu(), class_names) \
        if mapping is not None else {}

    image_rgb = image_bgr[..., ::-1]
    panel_w, panel_h = pa.panel_size_for(image_rgb.shape[:2], args.panel_size)
    small = mmcv.imresize(np.ascontiguousarray(image_rgb), (panel_w, panel_h))
    pred_small = mmcv.imresize(prediction.astype(np.int32), (panel_w, panel_h),
                               interpolation='nearest')
    panels = [('image', small),
              ('prediction', (0.4 * small + 0.6 * pa.colourise(pred_small, palette,
                                                               num_classes)).astype(np.uint8))]
    raw_maps = {}
    for block in blocks:
        guided = block in backbone.guided_blocks
        result = pa.prompt_attention_maps(backbone, block, captured[block], hw_shape,
                                     softmax_over=args.softmax_over)
        heat = pa.upsample_map(result.cls_map, (patch_h, patch_w), valid_hw, (panel_h, panel_w))
        panels.append((f'block {block}: CLS', pa.overlay(small, heat)))
        raw_maps[f'block{block}_cls'] = result.cls_map.numpy()
        for prompt, attention in zip(result.prompt_indices, result.prompt_maps):
            names = covered.get(prompt, []) if guided else []
            if guided and not names:
                continue  # a prompt no class maps to carries no class meaning
            if args.only_present and not present.intersection(names):
                continue
            title = pa.panel_title(prompt, names, present) if guided else \
                f'block {block}, prompt {prompt}'
            if guided and len(blocks) > 1:
                title = f'b{block} ' + title
            heat = pa.upsample_map(attention, (patch_h, patch_w), valid_hw, (panel_h, panel_w))
            panels.append((title, pa.overlay(small, heat)))
            raw_maps[f'block{block}_prompt{prompt}'] = attention.numpy()

    note = f'{osp.basename(args.checkpoint)} · softmax over {args.softmax_over} keys · * in ' \
        'prediction'
    if mapping is not None and not bool(mapping.initialized):
        note += ' · mapping not clustered yet (class c → prompt c mod M)'
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    size = pa.render_figure(args.out, small, panels, args.panel_size, args.cols, note)
    if args.save_maps:
        np.savez(args.save_maps, prediction=prediction, **raw_maps)
    print(f'wrote {args.out} ({size[0]}x{size[1]} px, {len(panels)} panels: image, '
          f'prediction, {len(panels) - 2} attention maps of blocks {blocks})')
    return dict(out=args.out, size=size, panels=[t for t, _ in panels], maps=raw_maps)


if __name__ == '__main__':
    main()
