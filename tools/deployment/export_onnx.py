# Export a segmentor to ONNX (image tensor -> logits, one window) and check it against PyTorch.
#
#   python tools/deployment/export_onnx.py CONFIG CHECKPOINT model.onnx  # any N, H, W
#   python tools/deployment/export_onnx.py CONFIG CHECKPOINT model.onnx --shape 512 512
#   python tools/deployment/infer.py CONFIG model.onnx images/ --out preds/ --backend onnxruntime
#
# --shape fixes the graph to one window size. CHECKPOINT: a full training checkpoint or a
# trainable-only export (tools/misc/export_trainable.py; the frozen trunk comes from
# model.backbone.init_cfg). The graph's input is the image as the config's data
# preprocessor leaves it (RGB, (x - mean) / std, NCHW float32); its output the logits at
# the input's size. Whole/slide inference stays in tools/deployment/infer.py
# (mmseg's code).
# After the export, PyTorch and onnxruntime run the same random input (the usual window and,
# for a dynamic graph, one of another size): the max abs difference of the logits is printed
# and the exit status is 1 above --tolerance. Exit status 2: bad arguments or files.
# Details, and why the height and width can be dynamic: docs/inference.md.
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from harness.entry import quiet_third_party_warnings  # noqa: E402

quiet_third_party_warnings()


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description='export the per-window inference graph to ONNX and check it')
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='full or trainable-only checkpoint')
    parser.add_argument('out', help='output .onnx file')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='export for this window size only (default: dynamic H and W)')
    parser.add_argument('--opset', type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument('--tolerance', type=float, default=1e-3,
                        help='largest accepted max abs logit difference (default 1e-3)')
    parser.add_argument('--check-batch', type=int, default=2,
                        help='batch size of the random check input')
    parser.add_argument('--seed', type=int, default=0, help='seed of the check input')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (mmseg syntax)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from davpt_seg.deploy import InputError, load_config, load_segmentor
    from davpt_seg.deploy.onnx_export import check_parity, export_onnx, parity_shapes
    from davpt_seg.deploy.onnx_runtime import create_session
    from davpt_seg.checkpoint.trainable import to_plain as plain
    if args.shape and min(args.shape) < 1:
        print('error: --shape needs positive H and W', file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.cfg_options)
        model, _ = load_segmentor(cfg, args.checkpoint, 'cpu')
        preprocessor = cfg.model.get('data_preprocessor') or {}
        info = export_onnx(model, args.out, args.shape, args.opset, metadata=dict(
            config=osp.abspath(args.config), checkpoint=osp.abspath(args.checkpoint),
            dataset_meta=plain(model.dataset_meta),
            preprocessing=plain({k: preprocessor.get(k)
                                 for k in ('mean', 'std', 'bgr_to_rgb', 'pad_val')})))
        shapes = parity_shapes(model, args.shape)
        rows = check_parity(model, create_session(args.out, 'cpu'), shapes,
                            args.check_batch, args.seed)
    except InputError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    kind = 'fixed {}x{}'.format(*args.shape) if args.shape else 'dynamic batch, height, width'
    print(f'wrote {args.out} ({info["bytes"] / 2**20:.1f} MiB, opset {info["opset"]}, '
          f'{kind}; {info["upsample_modules_rewritten"]} Upsample module(s) exported with '
          f'integer sizes) in {info["seconds"]:.1f} s')
    print(f'parity, PyTorch vs onnxruntime (CPU), random N(0, 1) input of batch '
          f'{args.check_batch}, seed {args.seed}:')
    for row in rows:
        print(f'  {row["shape"][0]}x{row["shape"][1]}: max abs diff {row["max_abs_diff"]:.3g} '
              f'(logits up to {row["max_abs_logit"]:.3g}), labels agree on '
              f'{100 * row["label_agreement"]:.3f}% of pixels')
    worst = max(row['max_abs_diff'] for row in rows)
    if worst > args.tolerance:
        print(f'FAILED: max abs diff {worst:.3g} > tolerance {args.tolerance:g}',
              file=sys.stderr)
        return 1
    print(f'OK: max abs diff {worst:.3g} <= tolerance {args.tolerance:g}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
