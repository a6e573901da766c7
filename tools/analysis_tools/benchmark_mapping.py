"""Cost of the class → prompt mapping's clustering at ADE20K scale, and its share of an epoch.

Times :meth:`ClassPromptMapping.recluster` (what ``ClassPromptMappingHook`` runs) on synthetic
class statistics of the real size: the initial fit once, then warm-started updates on
statistics that drifted, as they do between two updates in training. The epoch time is
``ceil(images / batch) × iter_time``; ``--iter-time`` is a stated per-iteration time (pass a
measured one to replace it). Run it with ``OMP_NUM_THREADS=1`` for the one-core cost.

    OMP_NUM_THREADS=1 python tools/analysis_tools/benchmark_mapping.py --prompts 10 20
"""
import argparse
import math
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from harness.entry import quiet_third_party_warnings  # noqa: E402

quiet_third_party_warnings()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--classes', type=int, default=150)
    parser.add_argument('--dim', type=int, default=1024)
    parser.add_argument('--prompts', type=int, nargs='+', default=[10, 20])
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--drift', type=float, default=1.0,
                        help='relative size of the change of each class sum between updates')
    parser.add_argument('--images', type=int, default=20210, help='ADE20K training images')
    parser.add_argument('--batch', type=int, default=16, help='total batch (8 GPUs x 2)')
    parser.add_argument('--iter-time', type=float, default=0.5,
                        help='seconds per training iteration (stated, see docs/mapping.md)')
    args = parser.parse_args()

    import torch

    from harness.benchmark.mapping_cost import measure_recluster
    epoch_iters = math.ceil(args.images / args.batch)
    epoch_seconds = epoch_iters * args.iter_time
    print(f'epoch: {epoch_iters} iterations x {args.iter_time} s = {epoch_seconds:.0f} s; '
          f'torch threads: {torch.get_num_threads()}')
    print(f'{"prompts":>7} {"initial fit s":>13} {"update s (median)":>17} '
          f'{"update s (max)":>14} {"changed":>7} {"share of epoch":>14}')
    for row in measure_recluster(args.classes, args.dim, args.prompts, args.repeats,
                                 args.drift):
        print(f'{row["prompts"]:>7} {row["initial"]:>13.3f} {row["update"]:>17.4f} '
              f'{row["update_max"]:>14.4f} {row["changed"]:>7.0f} '
              f'{100 * row["update"] / epoch_seconds:>13.4f}%')


if __name__ == '__main__':
    main()
