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


def main(argv=None):
    args = parse_args(argv)
    import numpy as np

    from davpt_seg.deploy import InputError, load_config, load_segmentor
    from davpt_seg.visualization import draw_prompt_attention
    if not osp.isfile(args.image):
        sys.exit(f'error: image {args.image!r} does not exist')
    try:
        cfg = load_config(args.config)
        model, _ = load_segmentor(cfg, args.checkpoint, args.device)
        if not hasattr(model.backbone, 'prompt_counts'):
            raise InputError(f'{args.config}: the backbone is a '
                             f'{type(model.backbone).__name__}; prompt attention maps need '
                             'the PromptedViT backbone')
        result = draw_prompt_attention(
            model, cfg, args.image, args.out, args.blocks, args.softmax_over,
            args.only_present, args.panel_size, args.cols, osp.basename(args.checkpoint))
    except (InputError, ValueError) as error:
        sys.exit(f'error: {error}')
    if args.save_maps:
        np.savez(args.save_maps, prediction=result['prediction'], **result['maps'])
    blocks = args.blocks or list(model.backbone.guided_blocks)
    print(f"wrote {args.out} ({result['size'][0]}x{result['size'][1]} px, "
          f"{len(result['panels'])} panels: image, prediction, "
          f"{len(result['panels']) - 2} attention maps of blocks {blocks})")
    return result


if __name__ == '__main__':
    main()
