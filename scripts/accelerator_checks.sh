#!/usr/bin/env bash
# The checks to run on a GPU (or TPU) node, in one go, each part under its own time limit:
# the device and software, attention paths against a float32 reference at MBT-B/16's shapes,
# then the MBT-B/16 benchmark in bfloat16 and in float32 (compile time, step time, MFU, memory,
# per attention path), then a run stopped on the accelerator and resumed on 4 CPU devices
# (random input, MBT-Ti/16 at 8 x 112 x 112 frames: same parameters?). Needs the core install
# (`pip install -e .`; no TensorFlow, no dataset).
#
#   bash scripts/accelerator_checks.sh [out_dir]      # default out_dir: /tmp/mbt_accelerator
#   ONLY="device resume_gpu_to_cpu" bash scripts/accelerator_checks.sh   # some parts only
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/mbt_accelerator}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

part() {  # part <name> <seconds> <command...>: runs it, its output also in $out/<name>.log
  local name=$1 limit=$2
  shift 2
  if [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then
    return 0
  fi
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
part resume_gpu_to_cpu "${RESUME_LIMIT:-400}" "$python" scripts/check_resume.py \
  --config=configs/vggsound.py --first="${FIRST:-gpu}" --then=cpu:4 --steps=40 --stop_after=10 \
  --set=dataset.random_input.enabled=True --set=model.variant=Ti/16 --set=dataset.num_frames=8 \
  --set=dataset.frame_size=112 --set=batch_size=8 --set=eval_batch_size=8 \
  --set=dataset.random_input.test_examples=16 --out="$out/resume"
