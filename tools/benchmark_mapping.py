"""Cost of the class → prompt mapping's clustering at ADE20K scale, and its share of an epoch.

Times :meth:`ClassPromptMapping.recluster` (what ``SemanticMappingHook`` runs) on synthetic
class statistics of the real size: the initial fit once, then warm-started updates on
statistics that drifted, as they do between two updates in training. The epoch time is
``ceil(images / batch) × iter_time``; ``--iter-time`` is a stated per-iteration time (pass a
measured one to replace it). Run it with ``OMP_NUM_THREADS=1`` for the one-core cost.

    OMP_NUM_THREADS=1 python tools/benchmark_mapping.py --prompts 10 20
"""
import argparse
import math
import statistics
import time

import torch

from davpt_seg.models.class_mapping import ClassPromptMapping


def synthetic_statistics(num_classes: int, dim: int, generator: torch.Generator):
    """Class sums and counts: 30 semantic groups, class-specific offsets, varied counts."""
    groups = torch.randn(30, dim, generator=generator)
    means = groups[torch.randint(0, 30, (num_classes, ), generator=generator)] + \
        torch.randn(num_classes, dim, generator=generator)
    counts = torch.randint(20, 5000, (num_classes, ), generator=generator).float()
    return means * counts[:, None], counts


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

    epoch_iters = math.ceil(args.images / args.batch)
    epoch_seconds = epoch_iters * args.iter_time
    print(f'epoch: {epoch_iters} iterations x {args.iter_time} s = {epoch_seconds:.0f} s; '
          f'torch threads: {torch.get_num_threads()}')
    print(f'{"prompts":>7} {"initial fit s":>13} {"update s (median)":>17} '
          f'{"update s (max)":>14} {"changed":>7} {"share of epoch":>14}')
    generator = torch.Generator().manual_seed(0)
    sums, counts = synthetic_statistics(args.classes, args.dim, generator)
    ClassPromptMapping(args.classes, 2, args.dim).recluster(sums, counts)  # warm up imports
    for num_prompts in args.prompts:
        mapping = ClassPromptMapping(args.classes, num_prompts, args.dim)
        start = time.perf_counter()
        mapping.recluster(sums, counts)
        initial = time.perf_counter() - start
        state = {k: v.clone() for k, v in mapping.state_dict().items()}
        seconds, changed = [], []
        for _ in range(args.repeats):
            mapping.load_state_dict(state)
            drifted = sums + args.drift * sums.norm(dim=1, keepdim=True) / math.sqrt(args.dim) * \
                torch.randn(sums.shape, generator=generator)
            report = mapping.recluster(drifted, counts)
            seconds.append(report.seconds)
            changed.append(report.changed)
        update = statistics.median(seconds)
        print(f'{num_prompts:>7} {initial:>13.3f} {update:>17.4f} {max(seconds):>14.4f} '
              f'{statistics.median(changed):>7.0f} {100 * update / epoch_seconds:>13.4f}%')


if __name__ == '__main__':
    main()
