#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md in one prepared call (under 6 minutes on an H200-class
# GPU), at the one-GPU recipe's scale (ViT-L/16, 512x512, bf16, batch 16):
#
#   1. --profile: where one DA-VPT training step's time goes (top operators by device and
#      host time, device idle fraction, host-device syncs), trace beside it;
#   2. --throughput: counted FLOPs and MFU against this GPU's measured bf16 matmul peak,
#      the batch sweep 2/8/16 of VPT-Deep and DA-VPT, inference (slide, whole, --tta), a
#      real training run of configs/one_gpu/setr_pup_davpt_ade20k_1xb16.py by mmengine's
#      runner (with where its iteration goes), then, while the budget lasts, the stock mmseg
#      peer and the speed-ups one by one (with their losses).
#
#   bash tools/misc/gpu_benchmark.sh [OUT_DIR]        # default OUT_DIR: work_dirs/gpu_benchmark
#
# Run from the repository root in davpt-seg's environment. It updates docs/benchmarks.md in
# place (sections profile-vit-l-512-cuda-* and throughput-vit-l-512-cuda) and copies it, the
# raw results (*.json), the trace and the log into OUT_DIR. No throughput stage starts after
# BUDGET_S seconds of it (default 190); the results are written after every stage, so a
# stopped run keeps what it measured.
set -euo pipefail

out=${1:-work_dirs/gpu_benchmark}
python_bin=${PYTHON:-python3}
budget=${BUDGET_S:-190}
mkdir -p "$out"

"$python_bin" - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit('gpu_benchmark.sh: torch sees no CUDA GPU; this benchmark is for one')
print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}')
PY

bench=("$python_bin" tools/analysis_tools/benchmark.py --setting vit-l-512 --device cuda
       --amp bf16 --out docs/benchmarks.md)
status=0
PYTHONUNBUFFERED=1 timeout 100 "${bench[@]}" --profile --batch-size 16 --profile-steps 3 \
  --warmup 3 --trace "$out/profile_davpt_b16.json.gz" --json "$out/profile.json" 2>&1 \
  | tee "$out/log.txt" || status=$?
PYTHONUNBUFFERED=1 timeout 265 "${bench[@]}" --throughput --batch-sizes 2 8 16 --repeats 3 \
  --iters 2 --warmup 3 --smoke-iters 40 --budget-s "$budget" --json "$out/throughput.json" \
  2>&1 | tee -a "$out/log.txt" || status=$?
cp docs/benchmarks.md "$out/benchmarks.md"
exit "$status"
