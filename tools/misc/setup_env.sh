#!/usr/bin/env bash
# Creates (or completes) the project's virtual environment. Idempotent: every step checks
# whether its result is already there, so a second run installs nothing.
#
# Environment switches:
#   VENV=path            where the environment lives (default: .venv in the repo root)
#   DAVPT_CACHE=path     where the built mmcv wheel is cached across clones (default:
#                        ~/.cache/davpt-seg); mmcv takes ~15 min to compile on 2 cores.
#   MMCV_WITH_CUDA=1     also build mmcv's CUDA ops (needs an nvcc of torch's CUDA version);
#                        default 0: CPU ops only, also on a GPU machine. No config of ours
#                        runs an mmcv op (mmseg only imports them), so CUDA ops add a long
#                        compile and the nvcc requirement for nothing; ask for them if your
#                        own configs use one (deformable convolution, CARAFE, ...).
#   TORCH_SPEC="..."     the torch/torchvision pins (default: the pair that lets timm import
#                        on the CPU-only dev machines; GPU users may pick their CUDA build).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=${VENV:-$repo_root/.venv}
cache=${DAVPT_CACHE:-$HOME/.cache/davpt-seg}
torch_spec=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
mmcv_version=2.1.0
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

# mmcv's setup.py and mmengine import pkg_resources, removed in setuptools 82. Every install
# below repeats the pin: torch, for one, requires setuptools and would otherwise upgrade it.
setuptools_pin="setuptools<82"

# shellcheck disable=SC2086
if ! has $torch_spec; then
  log "installing $torch_spec"
  "${pip[@]}" install -q $torch_spec "$setuptools_pin"
fi

if ! has wheel || ! "$py" -c 'import pkg_resources' 2>/dev/null; then
  "${pip[@]}" install -q "$setuptools_pin" wheel
fi

if ! has "mmcv==$mmcv_version" || ! "$py" -c 'from mmcv.ops import nms' 2>/dev/null; then
  torch_version=$("$py" -c 'import torch; print(torch.__version__.replace("+", "_"))')
  with_cuda=${MMCV_WITH_CUDA:-0}
  case "$with_cuda" in
    0|1) ;;
    *) echo "[setup] MMCV_WITH_CUDA=$with_cuda: use 1 (mmcv's CUDA ops) or 0 (CPU ops only, the default)" >&2; exit 1 ;;
  esac
  wheel_dir="$cache/mmcv-$mmcv_version-torch$torch_version-cuda$with_cuda"
  wheel=$(ls "$wheel_dir"/mmcv-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$wheel" ]; then
    log "building mmcv $mmcv_version with compiled ops (cuda=$with_cuda); ~15 min on 2 cores, cached in $wheel_dir"
    build_dir=$(mktemp -d)
    trap 'rm -rf "$build_dir"' EXIT
    "${pip[@]}" download -q --no-deps --no-build-isolation --no-binary :all: "mmcv==$mmcv_version" -d "$build_dir"
    tar -xzf "$build_dir"/mmcv-"$mmcv_version".tar.gz -C "$build_dir"
    src="$build_dir/mmcv-$mmcv_version"
    # torch >= 2.14 headers need C++20; mmcv 2.1.0 hard-codes C++17.
    sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
    export MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
    # mmcv's setup.py builds CUDA ops whenever torch sees a GPU, FORCE_CUDA=0 or not: for
    # CPU ops only, the build must not see one.
    if [ "$with_cuda" = 1 ]; then
      build_env=(env FORCE_CUDA=1)
    else
      build_env=(env FORCE_CUDA=0 CUDA_VISIBLE_DEVICES=)
    fi
    mkdir -p "$wheel_dir"
    "${build_env[@]}" "${pip[@]}" wheel --no-build-isolation --no-deps -w "$build_dir/dist" "$src"
    mv "$build_dir"/dist/mmcv-*.whl "$wheel_dir"/
    wheel=$(ls "$wheel_dir"/mmcv-*.whl | head -n 1)
  fi
  log "installing $wheel"
  "${pip[@]}" install -q --no-deps --force-reinstall "$wheel"
  "${pip[@]}" install -q addict numpy opencv-python packaging Pillow pyyaml yapf mmengine \
    "$setuptools_pin"
fi

stamp="$venv/.davpt-seg-installed"
if [ ! -f "$stamp" ] || [ "$repo_root/setup.py" -nt "$stamp" ]; then
  log "installing davpt-seg (editable) and its dependencies (extras: test, onnx)"
  "${pip[@]}" install -q -e "$repo_root[test,onnx]" "$setuptools_pin"
  touch "$stamp"
fi

"$py" -c 'import davpt_seg, mmseg, timm, sklearn, onnx, onnxruntime, onnxscript; from mmcv.ops import nms' \
  || { echo "[setup] environment check failed: see the errors above" >&2; exit 1; }
log "environment ready: $venv"
