#!/usr/bin/env bash
# The checks to run on a GPU (or TPU) node, in one go, each part under its own time limit:
# the device and software, attention paths against a float32 reference at MBT-B/16's shapes,
# then the MBT-B/16 benchmark in bfloat16 and in float32 (compile time, step time, MFU, memory,
# per attention path). Needs the core install (`pip install -e .`; no TensorFlow).
#
#   bash scripts/accelerator_checks.sh [out_dir]      # default out_dir: /tmp/mbt_accelerator
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/mbt_accelerator}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

part() {  # part <name> <seconds> <command...>: runs it, its output also in $out/<name>.log
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit} s) ==="
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v "^WARNING: All log messages before absl" | tee "$out/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s ==="
}

part device 60 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>/dev/null; $python -c 'import jax, flax; d = jax.devices()[0]; print(\"jax\", jax.__version__, \"flax\", flax.__version__, d.platform, d.device_kind, d.client.platform_version)'"
part check_attention "${CHECK_LIMIT:-240}" "$python" scripts/check_attention.py
part benchmark_mbt_b16_bf16 "${BENCH_LIMIT:-330}" "$python" scripts/benchmark_model.py \
  --preset=mbt_b16 --dtype=bfloat16 --batch_size="${BATCH:-8}" --steps=10 --out="$out"
part benchmark_mbt_b16_fp32 "${FP32_LIMIT:-200}" "$python" scripts/benchmark_model.py \
  --preset=mbt_b16 --dtype=float32 --batch_size="${BATCH:-8}" --steps=10 --out="$out"
