#!/usr/bin/env bash
# Run on the GPU machine, from the repository root, with .gpu/ carried (make gpu-prepare made it here).
# Installs the carried wheels into /tmp/site (the machine's own torch and transformers stay), puts
# the checkout on the path as the package `persd`, and runs the acceptance script; results in $OUT.
set -uo pipefail
OUT=${OUT:-runs/gpu-acceptance}
mkdir -p "$OUT"
if [ ! -d .gpu/whl ]; then
  echo "run.sh: .gpu/whl not found: run 'make gpu-prepare' here and carry .gpu" >&2
  exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
  || { echo "run.sh: installing the carried wheels failed" >&2; exit 1; }
mkdir -p /tmp/pkgroot && ln -sfn "$PWD" /tmp/pkgroot/persd
export PYTHONPATH=/tmp/pkgroot:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 PERSD_DATA_DIR=${PERSD_DATA_DIR:-$PWD/.gpu/data}
python3 -m persd.bench.gpu.acceptance --out "$OUT" --data-dir .gpu/data "$@" 2>&1 | tee "$OUT/log.txt"
