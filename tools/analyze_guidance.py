"""Which loss trains the prompts? Segmentation vs metric-loss gradients, per block.

For a DA-VPT config (and optionally a checkpoint), averages over a few training batches the
norm of each trainable backbone tensor's gradient from the segmentation losses and from
the two weighted metric losses, and their cosine. Without a checkpoint, the model is the
one training starts from: pretrained trunk, fresh prompts, the initial k-means mapping.

    python tools/analyze_guidance.py configs/camvid/setr_pup_dinov2-s14_davpt_camvid.py \\
        --cfg-options model.backbone.init_cfg.checkpoint=PATH/dinov2_vits14.safetensors \\
            train_dataloader.dataset.data_root=PATH/camvid --batches 4
"""
import argparse
import json
import math
import os.path as osp
import sys

import torch
from mmengine.config import Config, DictAction
from mmengine.model import revert_sync_batchnorm
from mmengine.runner import Runner, load_checkpoint

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import davpt_seg  # noqa: E402,F401  (registers modules, safe checkpoint loading)
from davpt_seg.analysis import guidance_gradient_shares  # noqa: E402
from davpt_seg.datasets import check_data_cfg  # noqa: E402
from davpt_seg.engine.hooks.semantic_mapping_hook import SemanticMappingHook  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--checkpoint', help='analyse this trained state (else: the start)')
    parser.add_argument('--batches', type=int, default=4, help='training batches to average')
    parser.add_argument('--init-batches', type=int, default=None,
                        help='batches of the initial k-means pass (default: the hook\'s, '
                        'i.e. the whole training set)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', help='also write the table as JSON here')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings (mmseg syntax)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    check_data_cfg(cfg, ('train', ), 'off')
    torch.manual_seed(args.seed)
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules()
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.init_weights()
    loader_cfg = dict(cfg.train_dataloader, num_workers=0, persistent_workers=False)
    loader = Runner.build_dataloader(loader_cfg, seed=args.seed)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, map_location='cpu')
    if getattr(model, 'class_mapping', None) is None:
        sys.exit('error: the config has no guided prompts (tuning_mode da-vpt or da-vpt+): '
                 'there are no metric losses to analyse')
    if not bool(model.class_mapping.initialized):
        init_batches = args.init_batches
        if init_batches is None:
            hooks = [h for h in cfg.get('custom_hooks', []) if h['type'] == 'SemanticMappingHook']
            init_batches = hooks[0].get('init_batches') if hooks else None
        print(SemanticMappingHook(init_batches=init_batches).initial_mapping(model, loader)
              .summary())
    model.train()
    batches = (batch for _, batch in zip(range(args.batches), loader))
    shares = guidance_gradient_shares(model, batches)

    print(f"{'tensor':40s} {'|g_seg|':>9s} {'|g_token|':>9s} {'|g_cls|':>9s} "
          f"{'metric/seg':>10s} {'cos':>6s}")
    for share in shares:
        cosine = '–' if math.isnan(share.cosine) else f'{share.cosine:+.2f}'
        print(f'{share.name:40s} {share.segmentation:9.2e} {share.token:9.2e} '
              f'{share.cls:9.2e} {share.ratio:10.2f} {cosine:>6s}')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump([dict(vars(s), ratio=s.ratio) for s in shares], f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
