#!/usr/bin/env python
"""How long the tools' data check takes at ADE20K's size, per --data-check mode.

Writes ``--files`` image/label pairs of ADE20K's typical size (683x512 JPEG, PNG labels made
of a few dozen regions of 150 classes, like ADE20K's) in its layout, times
``check_dataset`` in each mode and extrapolates the full check to ADE20K's 22,210 files
(20,210 train + 2,000 val). Run on an idle machine: the check is single-threaded.

    python tools/analysis_tools/benchmark_data_check.py --files 300
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from harness.entry import quiet_third_party_warnings  # noqa: E402

quiet_third_party_warnings()


def main(argv=None):
    from davpt_seg.datasets.checks import DEFAULT_LABEL_SAMPLES
    from harness.benchmark.data_check_cost import measure_data_check
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--files', type=int, default=300)
    args = parser.parse_args(argv)
    if args.files <= DEFAULT_LABEL_SAMPLES:
        parser.error(f'--files must exceed the {DEFAULT_LABEL_SAMPLES} files that sample '
                     'mode reads, to separate the two per-file costs')
    result = measure_data_check(args.files)
    print('| --data-check | label files whose values are read | seconds here | '
          'ADE20K (extrapolated) |')
    print('|---|---|---|---|')
    for mode, (elapsed, read) in result['seconds'].items():
        print(f'| {mode} | {read} | {elapsed:.2f} | {result["ade20k"][mode]} |')
    print(f'\nper file: header + size check {result["per_header"] * 1e3:.1f} ms, label '
          f'values {result["per_value"] * 1e3:.1f} ms')


if __name__ == '__main__':
    main()
