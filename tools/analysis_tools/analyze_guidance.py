"""Which loss trains the prompts? Segmentation vs metric-loss gradients, per block.

For a DA-VPT config (and optionally a checkpoint), averages over a few training batches the
norm of each trainable backbone tensor's gradient from the segmentation losses and from
the two weighted metric losses, and their cosine. Without a checkpoint, the model is the
one training starts from: pretrained trunk, fresh prompts, the initial k-means mapping.

    python tools/analysis_tools/analyze_guidance.py \\
        configs/camvid/setr_pup_dinov2-s14_davpt_camvid.py \\
        --cfg-options model.backbone.init_cfg.checkpoint=PATH/dinov2_vits14.safetensors \\
            train_dataloader.dataset.data_root=PATH/camvid --batches 4
"""
import argparse
import json
import math
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from harness.entry import quiet_third_party_warnings  # noqa: E402

quiet_third_party_warnings()


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
    from mmengine.config import DictAction
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings (mmseg syntax)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mmengine.config import Config

    import davpt_seg  # noqa: F401  (registers modules, safe checkpoint loading)
    from harness.guidance_gradients import analyze_config
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    try:
        shares = analyze_config(cfg, args.checkpoint, args.batches, args.init_batches,
                                args.seed)
    except ValueError as error:
        sys.exit(f'error: {error}')

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
