#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md in one prepared run: `benchmark.py --suite` at the
# paper's scale (ViT-L/16, 512x512, batch 2) on one CUDA GPU, in under 5 minutes on an
# H200-class GPU (the estimate: docs/benchmarks.md, "GPU"). Run from the repository root in
# davpt-seg's environment:
#
#   bash tools/misc/gpu_benchmark.sh [OUT_DIR]        # default OUT_DIR: work_dirs/gpu_benchmark
#
# It updates docs/benchmarks.md in place (section suite-vit-l-512-cuda) and copies it, the
# raw results (suite.json) and the log (log.txt) into OUT_DIR. No stage starts after
# BUDGET_S seconds (default 240) and the run is stopped at 300 s whatever happens; the
# results are written after every stage, so a stopped run keeps what it measured.
set -euo pipefail

out=${1:-work_dirs/gpu_benchmark}
python_bin=${PYTHON:-python3}
budget=${BUDGET_S:-240}
mkdir -p "$out"

"$python_bin" - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit('gpu_benchmark.sh: torch sees no CUDA GPU; this benchmark is for one')
print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}')
PY

status=0
PYTHONUNBUFFERED=1 timeout 300 "$python_bin" tools/analysis_tools/benchmark.py --suite \
  --setting vit-l-512 --device cuda --budget-s "$budget" --out docs/benchmarks.md \
  --json "$out/suite.json" 2>&1 | tee "$out/log.txt" || status=$?
cp docs/benchmarks.md "$out/benchmarks.md"
exit "$status"
