# Training-step time, throughput, peak memory and trainable parameters of mmseg's stock ViT
# (full / frozen), our backbone with the same tokens (full / linear), VPT-Deep, DA-VPT and
# DA-VPT+, all on the same SETR-PUP segmentor, interleaved and reported against VPT-Deep.
#
#   python tools/analysis_tools/benchmark.py --setting cpu --repeats 5 --out docs/benchmarks.md
#   python tools/analysis_tools/benchmark.py --setting vit-l-512 --device cuda --amp bf16 \
#       --with-cp \
#       --out docs/benchmarks.md
#
# --suite: one call at the paper's scale (fp32 / TF32 / bf16, with_cp off / on, eager /
# torch.compile, mmseg-full / VPT-Deep / DA-VPT, plus a bf16 smoke training of the real
# ADE20K config). --profile: where one training step's time goes (top operators by device
# and host time, device idle fraction, host-device syncs; the trace beside the table).
# --throughput: the one-GPU recipe's batch sweep with counted FLOPs and MFU, the speed-ups
# one by one, the stock mmseg peer, inference and a real training run.
# tools/misc/gpu_benchmark.sh runs --profile and --throughput on a GPU in one call.
#
# Settings: vit-l-512 (alias gpu; the paper's ViT-L/16 512x512 batch 2), cpu (ViT-S/16
# 256x256 batch 2, minutes on a laptop CPU), tiny (tests). Method: harness/benchmark/.
import argparse
import json
import os
import os.path as osp
import shlex
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from harness.entry import quiet_third_party_warnings  # noqa: E402

quiet_third_party_warnings()


def parse_args(argv=None):
    from mmengine.config import DictAction

    import harness.benchmark as bm
    parser = argparse.ArgumentParser(description='benchmark the PEFT variants')
    parser.add_argument('--setting', default='cpu',
                        help=f'one of {sorted(bm.SETTINGS) + sorted(bm.SETTING_ALIASES)}')
    parser.add_argument('--variants', nargs='+', choices=bm.VARIANTS, metavar='VARIANT',
                        help=f'subset of {bm.VARIANTS} (must include vpt-deep; default: all, '
                        f'with --suite {bm.SUITE_VARIANTS})')
    parser.add_argument('--repeats', type=int, default=5, help='interleaved rounds')
    parser.add_argument('--iters', type=int, default=2, help='steps per variant per round')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps per phase')
    parser.add_argument('--batch-size', type=int, help="override the setting's batch size")
    parser.add_argument('--img-size', type=int, help="override the setting's input size")
    parser.add_argument('--device', default='auto',
                        help="'auto' (the accelerator if there is one, else cpu), cpu, "
                        'cuda, cuda:1, ...')
    parser.add_argument('--amp', choices=['bf16'], help='bf16 autocast')
    parser.add_argument('--with-cp', action='store_true',
                        help='gradient checkpointing in every backbone block')
    parser.add_argument('--sdpa', default='auto', choices=bm.SDPA_BACKENDS,
                        help='force one scaled-dot-product-attention backend')
    parser.add_argument('--threads', type=int,
                        help='torch CPU threads per worker (default: all cores)')
    parser.add_argument('--no-flops', action='store_true', help='skip the FLOP counts')
    parser.add_argument('--start-method', default='auto',
                        choices=['auto', 'forkserver', 'spawn', 'fork'],
                        help='how workers start (auto: forkserver on the CPU where '
                        'available, spawn on an accelerator)')
    parser.add_argument('--memory', action='store_true',
                        help='training-step peak memory only: each variant in a fresh '
                        'process, one at a time, --iters training steps, for every '
                        '--cp-modes entry (RSS baseline, after the build and peak on the CPU)')
    parser.add_argument('--cp-modes', nargs='+', choices=['off', 'on'], default=['off', 'on'],
                        help='with --memory or --suite: measure without and/or with with_cp')
    parser.add_argument('--merge', metavar='JSON',
                        help='with --memory: the --json of an earlier run of the same setting '
                        'and device; the rows measured now replace its rows of the same '
                        'variant and with_cp, its other rows are kept')
    parser.add_argument('--onnx-latency', nargs='+', metavar='CONFIG',
                        help='instead of the variants: inference latency of each CONFIG\'s '
                        'model (random weights, one window of its usual size, --batch-size '
                        '(default 1)), PyTorch eager vs onnxruntime on its ONNX exports, '
                        '--repeats interleaved rounds, --threads threads for both')
    parser.add_argument('--suite', action='store_true',
                        help='the one-call benchmark: training step time and peak memory of '
                        'each --variants in every --precisions (and compiled in every '
                        '--compile-precisions), for every --cp-modes entry, then a smoke '
                        'training of the real ADE20K config (harness/benchmark/suite.py)')
    parser.add_argument('--precisions', nargs='+', choices=bm.PRECISIONS,
                        default=list(bm.PRECISIONS),
                        help='with --suite: fp32 (TF32 off), tf32, bf16 (autocast + TF32)')
    parser.add_argument('--compile-precisions', nargs='*', choices=bm.PRECISIONS,
                        default=['bf16'],
                        help='with --suite: precisions also timed with the transformer blocks '
                        'torch.compiled (none: no compile)')
    parser.add_argument('--compile-backend', default='inductor',
                        help="with --suite: torch.compile's backend (tests: aot_eager)")
    parser.add_argument('--smoke-iters', type=int, default=50,
                        help='with --suite: iterations of the smoke training (0: none)')
    parser.add_argument('--budget-s', type=float,
                        help='with --suite: start no stage (group, mode, round) after this many '
                        'seconds; what is skipped is listed')
    parser.add_argument('--profile', action='store_true',
                        help='profile --profile-steps training steps of the first --variants '
                        '(default da-vpt) at --batch-size in --amp or fp32 '
                        '(harness/benchmark/profile.py); --trace: where the trace goes')
    parser.add_argument('--profile-steps', type=int, default=3,
                        help='with --profile: steps recorded (after --warmup steps)')
    parser.add_argument('--trace', help='with --profile: write the Chrome trace here '
                        '(.json or .json.gz)')
    parser.add_argument('--speedups', choices=['stock', 'recipe'], default='recipe',
                        help='with --profile: the stock step (mmseg\'s head, eager) or the '
                        "recipe's (FastSETRUPHead, compile_regions)")
    parser.add_argument('--throughput', action='store_true',
                        help='batch sweep with counted FLOPs and MFU, the speed-ups one by one, '
                        'the stock mmseg peer, inference and a real training run of the '
                        'one-GPU recipe (harness/benchmark/throughput.py)')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[2, 8, 16],
                        help='with --throughput: the batch sweep')
    parser.add_argument('--stages', nargs='+', choices=bm.THROUGHPUT_STAGES,
                        default=list(bm.THROUGHPUT_STAGES),
                        help='with --throughput: the stages to run (default: all)')
    parser.add_argument('--smoke-cfg-options', nargs='+', action=DictAction, default={},
                        help="with --throughput: change the recipe of the training run "
                        "(stage smoke) as tools/train.py's --cfg-options does, e.g. "
                        "model.data_preprocessor.type=SegDataPreProcessor; the run gets a "
                        'section of its own')
    parser.add_argument('--out', help='markdown file whose section for this run is replaced')
    parser.add_argument('--json', help='also write the raw results here')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from mmengine.device import get_device

    import harness.benchmark as bm
    try:
        setting = bm.resolve_setting(args.setting, args.batch_size, args.img_size)
    except ValueError as error:
        sys.exit(f'error: {error}')
    device = get_device() if args.device == 'auto' else args.device
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') \
        else os.cpu_count()
    threads = args.threads or cores
    argv = sys.argv[1:] if argv is None else list(argv)
    command = 'python tools/analysis_tools/benchmark.py ' + ' '.join(shlex.quote(a) for a in argv)
    if args.onnx_latency:
        results = bm.run_onnx_latencies(
            args.onnx_latency, repeats=args.repeats, warmup=args.warmup,
            threads=args.threads or 1, batch_size=args.batch_size or 1,
            progress=lambda line: print(line, flush=True))
        return _report(args, results, command, bm.render_onnx_markdown(results, command),
                       'onnx-latency-cpu')
    if args.profile:
        variant = (args.variants or ['da-vpt'])[0]
        results = bm.run_profile(
            setting, variant, device=device, precision=args.amp or 'fp32',
            steps=args.profile_steps, warmup=args.warmup, threads=threads, sdpa=args.sdpa,
            trace_path=args.trace, start_method=args.start_method,
            recipe=args.speedups == 'recipe', compile_backend=args.compile_backend,
            progress=lambda line: print(line, flush=True))
        return _report(args, results, command, bm.render_profile_markdown(results, command),
                       bm.profile_section_key(results))
    if args.throughput:
        def report_throughput(results, quiet=True):
            return _report(args, results, command,
                           bm.render_throughput_markdown(results, command),
                           bm.throughput_section_key(results), quiet)
        return report_throughput(bm.run_throughput(
            setting, device=device, precision=args.amp or 'fp32',
            batch_sizes=args.batch_sizes, variants=args.variants or ('vpt-deep', 'da-vpt'),
            compile_backend=args.compile_backend, repeats=args.repeats, iters=args.iters,
            warmup=args.warmup, threads=threads, smoke_iters=args.smoke_iters,
            smoke_cfg_options=args.smoke_cfg_options, stages=args.stages,
            budget_s=args.budget_s, start_method=args.start_method,
            progress=lambda line: print(line, flush=True), on_update=report_throughput),
            quiet=False)
    if args.suite:
        def report_suite(results, quiet=True):
            return _report(args, results, command, bm.render_suite_markdown(results, command),
                           bm.suite_section_key(results), quiet)
        return report_suite(bm.run_suite(
            setting, args.variants or bm.SUITE_VARIANTS, precisions=args.precisions,
            compile_precisions=args.compile_precisions,
            cp_modes=[m == 'on' for m in args.cp_modes], repeats=args.repeats,
            iters=args.iters, warmup=args.warmup, device=device, threads=threads,
            sdpa=args.sdpa, compile_backend=args.compile_backend,
            smoke_iters=args.smoke_iters, budget_s=args.budget_s,
            start_method=args.start_method, progress=lambda line: print(line, flush=True),
            on_update=report_suite), quiet=False)
    variants = args.variants or list(bm.VARIANTS)
    if args.memory:
        earlier = None
        if args.merge:
            with open(args.merge) as handle:
                earlier = json.load(handle)

        def report(results, quiet=True):
            if earlier is not None:
                results = bm.merge_memory_results(earlier, results)
            return _report(args, results, command, bm.render_memory_markdown(results, command),
                           bm.memory_section_key(results), quiet)
        return report(bm.run_memory(
            setting, variants, with_cp_modes=[m == 'on' for m in args.cp_modes],
            steps=args.iters, device=device, threads=threads,
            start_method=args.start_method, progress=lambda line: print(line, flush=True),
            on_row=report), quiet=False)
    results = bm.run_benchmark(
        setting, variants, repeats=args.repeats, iters=args.iters, warmup=args.warmup,
        device=device, amp=args.amp, with_cp=args.with_cp, threads=threads, sdpa=args.sdpa,
        count_flops=not args.no_flops, start_method=args.start_method,
        progress=lambda line: print(line, flush=True))
    return _report(args, results, command, bm.render_markdown(results, command),
                   bm.section_key(results))


def _report(args, results: dict, command: str, markdown: str, key: str,
            quiet: bool = False) -> dict:
    """Prints the section, puts it into --out and the raw results into --json."""
    import harness.benchmark as bm
    results['command'] = command
    if not quiet:
        print(markdown)
    if args.out:
        bm.update_doc(args.out, key, markdown)
        if not quiet:
            print(f'updated {args.out} (section {key})')
    if args.json:
        from harness.markdown import write_atomically
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        write_atomically(args.json, json.dumps(results, indent=1))
    return results


if __name__ == '__main__':
    main()
