# Export the trained weights of a DA-VPT / VPT checkpoint without the frozen pretrained trunk.
#
#   python tools/misc/export_trainable.py work_dirs/x/iter_160000.pth davpt_ade20k_trainable.pth
#   python tools/test.py configs/setr_pup_davpt_ade20k.py davpt_ade20k_trainable.pth
#
# The export keeps prompts, k/v bias offsets, heads, BN statistics and the class → prompt
# mapping, as plain tensors (loads with torch.load(weights_only=True)); tools/test.py and
# load_from load it like a full checkpoint: the backbone restores its frozen trunk from
# model.backbone.init_cfg's pretrained file and checks it is the trunk the export was made
# from. `.safetensors` output is for other tools (mmengine's loader reads only .pth).
#
#   python tools/misc/export_trainable.py --estimate configs/setr_pup_davpt_ade20k.py
# prints the full-checkpoint and export sizes a config implies, without a checkpoint.
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from harness.entry import quiet_third_party_warnings  # noqa: E402

quiet_third_party_warnings()


def _mb(num_bytes: int) -> str:
    return f'{num_bytes / 2**20:,.1f} MiB'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__ or 'export trainable weights')
    parser.add_argument('src', nargs='?', help='full training checkpoint (mmengine .pth)')
    parser.add_argument('dst', nargs='?', help='output: .pth (default) or .safetensors')
    parser.add_argument('--config', help='training config (default: the one stored in the '
                        "checkpoint's meta)")
    parser.add_argument('--estimate', metavar='CONFIG',
                        help='only print the sizes that CONFIG implies (no checkpoint needed)')
    args = parser.parse_args(argv)

    from davpt_seg.checkpoint import trainable as tc
    if args.estimate:
        from mmengine.config import Config
        model = tc.build_model_from_checkpoint_cfg(Config.fromfile(args.estimate))
        sizes = tc.checkpoint_size_estimate(model)
        print(f'{args.estimate}: full checkpoint ~{_mb(sizes["full_bytes"])} (weights '
              f'{_mb(sizes["weights_bytes"])} + AdamW moments), trainable-only export '
              f'~{_mb(sizes["export_bytes"])} ({sizes["kept_tensors"]} tensors; '
              f'{sizes["frozen_tensors"]} frozen trunk tensors dropped), '
              f'{sizes["full_bytes"] / sizes["export_bytes"]:.1f}x smaller')
        return sizes
    if not (args.src and args.dst):
        parser.error('give SRC and DST (or --estimate CONFIG)')
    if osp.abspath(args.src) == osp.abspath(args.dst):
        parser.error('DST must differ from SRC: the export never overwrites its source')
    try:
        summary = tc.export_trainable(args.src, args.dst, args.config)
    except (FileNotFoundError, KeyError, ValueError, TypeError) as error:
        sys.exit(f'error: {error}')
    print(f'wrote {summary["dst"]}: {summary["kept_tensors"]} tensors '
          f'({summary["kept_numel"] / 1e6:.2f}M values), {_mb(summary["dst_bytes"])} vs '
          f'{_mb(summary["src_bytes"])} for the full checkpoint '
          f'({summary["src_bytes"] / summary["dst_bytes"]:.1f}x smaller); '
          f'{summary["dropped_tensors"]} frozen trunk tensors come back from '
          f'{summary["pretrained"]} at load time')
    return summary


if __name__ == '__main__':
    main()
