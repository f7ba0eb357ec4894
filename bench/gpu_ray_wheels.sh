#!/usr/bin/env bash
# Ray for the GPU machine: it has no Ray, and one device call carries at most 64 MiB of files while
# Ray's cp312 manylinux wheel is ~79 MB. So Ray's wheel travels in two halves over two calls on the
# same warm machine (ignored files carried by the first call are still there for the second), is
# joined there, checked, and installed with the few wheels Ray needs that the machine lacks. The
# calls the lead makes are in the docstring of bench/gpu_check.py.
#
#   bash bench/gpu_ray_wheels.sh prepare [PYVER]    here: wheels for CPython PYVER (default 3.12) into
#                                                   bench/.ray_wheels/part1 (half of Ray + its missing
#                                                   dependencies) and bench/.ray_wheels/part2 (other half)
#   bash bench/gpu_ray_wheels.sh install [TARGET]   there: join, check the sha256, then
#                                                   pip install --no-index --no-deps --target TARGET
#                                                   (default /tmp/site); use PYTHONPATH=TARGET:.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=bench/.ray_wheels
RAY_VERSION=2.60.0
# Ray 2.60 requires click, filelock, jsonschema, msgpack, packaging, protobuf, pyyaml, requests; the GPU
# machine has all of them but jsonschema, whose own dependencies are attrs (there), referencing,
# jsonschema-specifications and rpds-py (compiled). Versions: those Ray 2.60 runs with on the CPU machines.
DEPS=(jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==0.30.0)
PYTHON=${PYTHON:-python3}

prepare() {
  local pyver=${1:-3.12}
  rm -rf "$WHEELS"
  mkdir -p "$WHEELS/download" "$WHEELS/part1" "$WHEELS/part2"
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS/download" "ray==$RAY_VERSION" "${DEPS[@]}"
  local wheel name half
  wheel=$(ls "$WHEELS"/download/ray-*.whl)
  name=$(basename "$wheel")
  half=$(( ($(stat -c %s "$wheel") + 1) / 2 ))
  split -b "$half" -d -a 1 "$wheel" "$WHEELS/download/ray.part"
  mv "$WHEELS/download/ray.part0" "$WHEELS/part1/"
  mv "$WHEELS/download/ray.part1" "$WHEELS/part2/"
  (cd "$WHEELS/download" && sha256sum "$name") > "$WHEELS/part1/ray.sha256"
  rm "$wheel"
  mv "$WHEELS"/download/*.whl "$WHEELS/part1/"
  rmdir "$WHEELS/download"
  du -sh "$WHEELS/part1" "$WHEELS/part2"
}

install() {
  local target=${1:-/tmp/site}
  for part in part1/ray.part0 part1/ray.sha256 part2/ray.part1; do
    if [[ ! -f "$WHEELS/$part" ]]; then
      echo "gpu_ray_wheels.sh: $WHEELS/$part is missing: carry $WHEELS/part1 in one call and $WHEELS/part2" \
           "in the next while the machine is still warm (a machine given back in between starts bare)" >&2
      exit 2
    fi
  done
  local name
  JOIN_DIR=$(mktemp -d)
  trap 'rm -rf "$JOIN_DIR"' EXIT
  name=$(awk '{print $2}' "$WHEELS/part1/ray.sha256")
  cat "$WHEELS/part1/ray.part0" "$WHEELS/part2/ray.part1" > "$JOIN_DIR/$name"
  if ! (cd "$JOIN_DIR" && sha256sum --status -c -) < "$WHEELS/part1/ray.sha256"; then
    echo "gpu_ray_wheels.sh: the joined $name does not match its sha256 (parts from different prepare runs?)" >&2
    exit 2
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" \
    "$JOIN_DIR/$name" "$WHEELS"/part1/*.whl
  echo "gpu_ray_wheels.sh: ray installed in $target (run with PYTHONPATH=$target:.)" >&2
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  install) shift; install "$@" ;;
  *) echo "usage: bash bench/gpu_ray_wheels.sh prepare [PYVER] | install [TARGET]" >&2; exit 2 ;;
esac
