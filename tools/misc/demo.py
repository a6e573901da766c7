"""`make demo`: DA-VPT end to end on a fresh machine's CPUs in a few minutes.

1. writes a seeded synthetic dataset in ADE20K's layout (harness/synthetic.py);
2. trains configs/demo_davpt_synthetic.py -- the real DA-VPT ADE20K config shrunk to a tiny,
   randomly initialised ViT -- with tools/train.py (real PromptedViT, DAVPTEncoderDecoder,
   metric losses and ClassPromptMappingHook);
3. tests the checkpoint with tools/test.py, single-scale and with --tta (multi-scale + flip);
4. prints mIoU-SS / mIoU-MS against chance, the loss at the start and end, and where the
   checkpoint and logs are; exits non-zero when a figure misses its bar.

Each step is a subprocess of the real tool, exactly what a user would type.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from harness.entry import quiet_third_party_warnings  # noqa: E402

quiet_third_party_warnings()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default=osp.join('work_dirs', 'demo'),
                        help='data, logs and checkpoint go here (replaced on each run)')
    parser.add_argument('--iters', type=int, default=600, help='training iterations')
    parser.add_argument('--num-train', type=int, default=160)
    parser.add_argument('--num-val', type=int, default=40)
    parser.add_argument('--seed', type=int, default=0, help='data and training seed')
    # One thread: the tiny model gains little from a second one, and on a busy machine
    # spinning OpenMP threads slow each step down by an order of magnitude.
    parser.add_argument('--threads', type=int, default=1, help='OMP threads of each step')
    return parser.parse_args()


def main():
    from harness.demo import DemoError, run_demo
    args = parse_args()
    try:
        summary = run_demo(args.work_dir, args.iters, args.num_train, args.num_val, args.seed,
                           args.threads)
    except DemoError as error:
        sys.exit(str(error))
    if not all(summary['checks'].values()):
        sys.exit('[demo] some checks failed (see above)')


if __name__ == '__main__':
    main()
