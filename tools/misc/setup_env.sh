#!/usr/bin/env bash
# Creates (or completes) the project's virtual environment. Idempotent: every step checks
# whether its result is already there, so a second run installs nothing.
#
# Environment switches:
#   VENV=path            where the environment lives (default: .venv in the repo root)
#   MMCV_OPS=lite|compiled  mmcv-lite (default; nothing compiles) or mmcv with its compiled
#                        ops (12-35 min once per machine, then cached); unset keeps what the
#                        environment has. tools/misc/setup_mmcv.sh has this switch's
#                        companions (MMCV_WITH_CUDA, MMCV_WHEEL, DAVPT_CACHE, MAX_JOBS).
#   TORCH_SPEC="..."     the torch/torchvision pins (default: the pair that lets timm import
#                        on the CPU-only dev machines; GPU users may pick their CUDA build).
#   PYTHON=python3.x     the interpreter of a new environment.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=${VENV:-$repo_root/.venv}
torch_spec=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
python_bin=${PYTHON:-python3}

log() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating virtualenv $venv"
  "$python_bin" -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip --disable-pip-version-check)

has() { "$py" - "$@" <<'PY' 2>/dev/null
import importlib.metadata as md, sys
for spec in sys.argv[1:]:
    name, _, version = spec.partition("==")
    try:
        installed = md.version(name)
    except md.PackageNotFoundError:
        sys.exit(1)
    if version and installed.split("+")[0] != version:
        sys.exit(1)
PY
}

# mmengine imports pkg_resources, removed in setuptools 82. Every install below repeats the
# pin: torch, for one, requires setuptools and would otherwise upgrade it.
setuptools_pin="setuptools<82"

# shellcheck disable=SC2086
if ! has $torch_spec; then
  log "installing $torch_spec"
  "${pip[@]}" install -q $torch_spec "$setuptools_pin"
fi

bash "$repo_root/tools/misc/setup_mmcv.sh" "$py"

stamp="$venv/.davpt-seg-installed"
if [ ! -f "$stamp" ] || [ "$repo_root/setup.py" -nt "$stamp" ]; then
  log "installing davpt-seg (editable) and its dependencies (extras: test, onnx)"
  "${pip[@]}" install -q -e "$repo_root[test,onnx]" "$setuptools_pin"
  touch "$stamp"
fi

"$py" -c 'import davpt_seg, mmseg.models, timm, sklearn, onnx, onnxruntime, onnxscript' \
  || { echo "[setup] environment check failed: see the errors above" >&2; exit 1; }
log "environment ready: $venv"
