#!/usr/bin/env bash
# Installs mmcv 2.1.0 into the environment of PYTHON_BIN, as mmcv-lite (no compiled ops, the
# default: seconds) or compiled (its ops built from source: 12-35 min on 2 cores, once per
# machine; the wheel is cached), and switches an environment from one to the other.
# tools/misc/setup_env.sh calls it; it can run alone:
#
#   bash tools/misc/setup_mmcv.sh PYTHON_BIN
#
# Environment switches:
#   MMCV_OPS=lite|compiled  which mmcv. Unset: keep what the environment has (lite in a new
#                        one), so a later `make test` never undoes a `MMCV_OPS=compiled make
#                        setup`. No config of ours calls an mmcv op (mmseg merely imports
#                        them: davpt_seg/mmcv_lite.py stands in for them); compile them for
#                        a config of your own that uses one (deformable convolution, ...).
#   MMCV_WITH_CUDA=0|1   with MMCV_OPS=compiled: also build the CUDA ops (needs an nvcc of
#                        torch's CUDA version). Default 0.
#   MMCV_WHEEL=path      with MMCV_OPS=compiled: install this mmcv 2.1.0 wheel (built for
#                        the environment's torch) instead of building or reusing the cache.
#   DAVPT_CACHE=path     where the compiled wheel is cached (default ~/.cache/davpt-seg).
#   MAX_JOBS=N           compile parallelism (default: all cores).
set -euo pipefail

py=${1:?usage: setup_mmcv.sh PYTHON_BIN}
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${DAVPT_CACHE:-$HOME/.cache/davpt-seg}
mmcv_version=2.1.0
pip=("$py" -m pip --disable-pip-version-check)
# mmcv's setup.py and mmengine import pkg_resources, removed in setuptools 82.
setuptools_pin="setuptools<82"

log() { printf '[setup] %s\n' "$*"; }
fail() { printf '[setup] %s\n' "$*" >&2; exit 1; }

# The version of an installed distribution, or nothing.
version_of() { "$py" - "$1" <<'PY' 2>/dev/null || true
import importlib.metadata as md, sys
try:
    print(md.version(sys.argv[1]).split('+')[0])
except md.PackageNotFoundError:
    pass
PY
}

# Both distributions install the package folder mmcv/: a clean reinstall of the one asked
# for, never an overlay; then its run-time dependencies (mmengine, opencv, ...), which the
# forced reinstall must not touch (it would reinstall numpy and the rest).
install_mmcv() {
  "${pip[@]}" install -q --force-reinstall --no-deps "$1"
  "${pip[@]}" install -q "$1" "$setuptools_pin"
}

compiled_ext_present() {
  "$py" "$repo_root/davpt_seg/mmcv_lite.py" --check-compiled >/dev/null 2>&1
}

lite=$(version_of mmcv-lite)
full=$(version_of mmcv)
if [ -n "$lite" ] && [ -n "$full" ]; then
  installed=both  # one clobbered the other's files: reinstall whichever is asked for
elif [ -n "$full" ]; then
  installed=compiled
elif [ -n "$lite" ]; then
  installed=lite
else
  installed=none
fi

want=${MMCV_OPS:-}
case "$want" in
  "") want=$([ "$installed" = compiled ] && echo compiled || echo lite) ;;
  lite|compiled) ;;
  *) fail "MMCV_OPS=$want: use lite (mmcv-lite, no compiled ops: the default) or compiled (builds mmcv's ops, 12-35 min)" ;;
esac

if [ "$want" = lite ]; then
  if [ "$installed" != lite ] || [ "$lite" != "$mmcv_version" ]; then
    if [ -n "$full" ]; then
      log "switching to mmcv-lite: uninstalling mmcv $full (the compiled wheel stays cached in $cache)"
      "${pip[@]}" uninstall -q -y mmcv
    fi
    log "installing mmcv-lite $mmcv_version (no compiled ops; MMCV_OPS=compiled builds them)"
    install_mmcv "mmcv-lite==$mmcv_version"
  fi
else
  if [ "$installed" != compiled ] || [ "$full" != "$mmcv_version" ] || ! compiled_ext_present; then
    wheel=${MMCV_WHEEL:-}
    if [ -n "$wheel" ]; then
      [ -f "$wheel" ] || fail "MMCV_WHEEL=$wheel: no such file"
    else
      torch_version=$("$py" -c 'import torch; print(torch.__version__.replace("+", "_"))')
      with_cuda=${MMCV_WITH_CUDA:-0}
      case "$with_cuda" in
        0|1) ;;
        *) fail "MMCV_WITH_CUDA=$with_cuda: use 1 (mmcv's CUDA ops) or 0 (CPU ops only, the default)" ;;
      esac
      wheel_dir="$cache/mmcv-$mmcv_version-torch$torch_version-cuda$with_cuda"
      wheel=$(ls "$wheel_dir"/mmcv-*.whl 2>/dev/null | head -n 1 || true)
    fi
    if [ -z "$wheel" ]; then
      log "building mmcv $mmcv_version with compiled ops (cuda=$with_cuda); 12-35 min on 2 cores, cached in $wheel_dir"
      "${pip[@]}" install -q "$setuptools_pin" wheel
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
    if [ -n "$lite" ]; then
      log "switching to the compiled mmcv: uninstalling mmcv-lite $lite"
      "${pip[@]}" uninstall -q -y mmcv-lite
    fi
    log "installing $wheel"
    install_mmcv "$wheel"
  fi
fi
# The start-up hook that makes the stand-in independent of import order; with the compiled
# ops it stays inactive (davpt_seg/mmcv_lite.py).
"$py" "$repo_root/davpt_seg/mmcv_lite.py" --write-pth >/dev/null

if [ "$want" = compiled ]; then
  compiled_ext_present || fail "mmcv's compiled extension does not load: see the errors above"
  log "mmcv $mmcv_version with compiled ops"
else
  ! compiled_ext_present || fail "mmcv-lite is installed but a compiled mmcv/_ext remains: rerun with MMCV_OPS=lite"
  log "mmcv-lite $mmcv_version (ops stand-in: davpt_seg/mmcv_lite.py)"
fi
