#!/usr/bin/env bash
# One study schedule's runs on one CUDA GPU, all at once, in one prepared call. By default
# the CCP study's longer schedule (configs/studies/ccp.py, `linhead-lr3e-3-1800`: 4 variants
# x 3 seeds), sized to finish in under 9 minutes on an H200-class GPU. Run from the
# repository root in davpt-seg's environment:
#
#   DATA_ROOT=PATH/ccp PRETRAINED=PATH/dinov2_vits14.safetensors \
#     bash tools/misc/gpu_study.sh OUT_DIR [STUDY [SCHEDULE]]
#
# It runs `tools/study.py STUDY run --schedule SCHEDULE --jobs JOBS --threads 1` (JOBS
# default 12: the schedule's runs share the GPU, one CPU thread each) and stops it, runs and
# all, at LIMIT_S seconds (default 570, inside a 10-minute call with time to copy); then it
# copies the schedule's JSONs to OUT_DIR/docs/results/... (the repository's own paths: copy
# them back and commit them, then `python tools/study.py STUDY report`) and every run's log
# to OUT_DIR/logs/, so a run that was stopped still says how far it got. Runs whose JSON
# exists are skipped. docs/results/ccp.md ("A longer schedule") gives the whole procedure.
set -euo pipefail

out=${1:?usage: bash tools/misc/gpu_study.sh OUT_DIR [STUDY [SCHEDULE]]}
study=${2:-ccp}
schedule=${3:-linhead-lr3e-3-1800}
python_bin=${PYTHON:-python3}
jobs=${JOBS:-12}
limit=${LIMIT_S:-570}
mkdir -p "$out"

"$python_bin" - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit('gpu_study.sh: torch sees no CUDA GPU; on a CPU, run tools/study.py STUDY run '
             '--jobs N yourself')
print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}')
PY

# Where the schedule's JSONs and work dirs go (the study file says).
read -r results work < <("$python_bin" - "$study" "$schedule" <<'PY'
import os.path as osp
import sys
sys.path.insert(0, '.')
from harness.study.spec import load_study
study = load_study(sys.argv[1], '.')
schedule = study.schedule(sys.argv[2])
print(osp.join(study.results_dir, schedule.dir), osp.join(study.work_root, schedule.dir))
PY
)

args=(run --schedule "$schedule" --jobs "$jobs" --threads 1)
[ -n "${DATA_ROOT:-}" ] && args+=(--data-root "$DATA_ROOT")
[ -n "${PRETRAINED:-}" ] && args+=(--pretrained "$PRETRAINED")
status=0
PYTHONUNBUFFERED=1 timeout -k 10 "$limit" "$python_bin" tools/study.py "$study" "${args[@]}" \
  2>&1 | tee "$out/study.txt" || status=$?

if [ "$status" = 124 ]; then
  echo "gpu_study.sh: stopped after LIMIT_S=$limit s; the runs without a JSON did not finish" \
    "(their logs, in $out/logs, say how far they got)" | tee -a "$out/study.txt"
fi
out_abs=$(cd "$out" && pwd)
if [ -d "$results" ]; then
  find "$results" -name 'seed*.json' -exec cp --parents {} "$out_abs"/ \;
fi
if [ -d "$work" ]; then
  mkdir -p "$out_abs/logs"
  (cd "$work" && find . -name study.log -exec cp --parents {} "$out_abs/logs/" \;)
fi
exit "$status"
