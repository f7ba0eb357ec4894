#!/usr/bin/env bash
# Ray for the GPU machine: it has no Ray, and one device call carries at most 64 MiB of files while
# Ray's cp312 manylinux wheel is ~79 MB (201 MB unpacked). What the recipes import of it fits in one
# call: the wheel unpacked without the parts they never load (Java jars, RLlib, Data, Tune, Train,
# LLM), re-packed with xz (~30 MB), plus the few wheels Ray needs that the machine lacks.
#
#   bash bench/gpu_ray_wheels.sh prepare [PYVER]    here (~3 min on 2 cores, mostly xz): into the
#                                                   git-ignored bench/.ray_wheels/ for CPython PYVER (3.12)
#   bash bench/gpu_ray_wheels.sh install [TARGET]   there: unpack Ray into TARGET (default /tmp/site)
#                                                   and pip install --no-index --no-deps --target TARGET
#                                                   the other wheels; then run with PYTHONPATH=TARGET:$PWD
#
# The device call (bench/gpu_check.py's docstring): carry ["bench/.ray_wheels"], run
#   bash bench/gpu_ray_wheels.sh install && PYTHONPATH=/tmp/site:$PWD python3 bench/gpu_check.py > $OUT/gpu_check.json
# (an absolute PYTHONPATH: the recipe's subprocess and Ray's workers run in other folders).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=bench/.ray_wheels
RAY_VERSION=2.60.0
# Ray 2.60 requires click, filelock, jsonschema, msgpack, packaging, protobuf, pyyaml, requests; the GPU
# machine has all of them but jsonschema, whose own dependencies are attrs (there), referencing,
# jsonschema-specifications and rpds-py (compiled). Versions: those Ray 2.60 runs with on the CPU machines.
DEPS=(jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==0.30.0)
# parts of the wheel no recipe imports (the dashboard stays: --dashboard needs it where its extras exist)
UNUSED=(ray/jars ray/rllib ray/data ray/tune ray/train ray/llm)
PYTHON=${PYTHON:-python3}

prepare() {
  local pyver=${1:-3.12} unpack
  rm -rf "$WHEELS"
  mkdir -p "$WHEELS"
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" "ray==$RAY_VERSION" "${DEPS[@]}"
  unpack=$(mktemp -d)
  trap 'rm -rf "$unpack"' EXIT
  "$PYTHON" -m zipfile -e "$WHEELS"/ray-*.whl "$unpack"
  (cd "$unpack" && rm -rf "${UNUSED[@]}" && tar -cf - .) | xz -6 -T0 > "$WHEELS/ray.tar.xz"
  rm "$WHEELS"/ray-*.whl
  du -sh "$WHEELS"
}

install() {
  local target=${1:-/tmp/site}
  if [[ ! -f "$WHEELS/ray.tar.xz" ]]; then
    echo "gpu_ray_wheels.sh: $WHEELS/ray.tar.xz is missing: run 'bash bench/gpu_ray_wheels.sh prepare' here" \
         "and carry $WHEELS in the device call" >&2
    exit 2
  fi
  mkdir -p "$target"
  tar -xJf "$WHEELS/ray.tar.xz" -C "$target"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" \
    "$WHEELS"/*.whl
  echo "gpu_ray_wheels.sh: ray installed in $target (run with PYTHONPATH=$target:\$PWD)" >&2
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  install) shift; install "$@" ;;
  *) echo "usage: bash bench/gpu_ray_wheels.sh prepare [PYVER] | install [TARGET]" >&2; exit 2 ;;
esac
