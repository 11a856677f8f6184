#!/usr/bin/env bash
# scripts/gpu_check.sh: what a lent GPU is for, in under 5 minutes on one GPU.
#
#   1. the BN-strategy throughput table of BYOL (sync/sync, local/local, local/sync,
#      local/momentum, local/shuffle; 8 devices emulated, bf16, channels_last) for resnet50 at
#      224 px and resnet18 at 96 px, batch 256 (experiments/gpu_check.yaml, bench cells);
#   2. one short end-to-end M2T cell on the device: training, then kNN and linear probes
#      (experiments/gpu_check_e2e.yaml);
#   3. a compact table printed at the end and written to OUT/gpu_check-<GPU name>-<date>.md,
#      ready to be copied to reports/gpu/ (only a table this script measured belongs there).
#
# Usage: scripts/gpu_check.sh [--device cuda|cpu] [--tiny] [--out DIR]
#   --tiny        resnet10t at 16 px, batch 8, 1 timed round, fp32: checks every path (on CPU
#                 in the tests), measures nothing worth keeping
#   --out DIR     results folder (MLflow store, cell folders, the table); default gpu_check_out
# Environment: PYTHON (default: python), the interpreter with bnsuite installed.
# Exit status: 0 when every cell finished, 1 otherwise (the table shows what finished).
set -uo pipefail

DEVICE=cuda
TINY=0
OUT=gpu_check_out
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
URI="sqlite:///$OUT/mlflow.db"
START=$(date +%s)

GPU="$("$PY" -c "from suite import runtime; from suite.throughput import slug; print(slug(runtime.device_name(runtime.resolve_device('$DEVICE'))))")" || exit 2
TABLE="$OUT/gpu_check-$GPU-$(date -u +%Y%m%d-%H%M).md"

if [ "$TINY" = 1 ]; then
  CONFIGS=("resnet10t 16 8")
  export GPU_CHECK_DEVICES=2 GPU_CHECK_PRECISION=fp32 GPU_CHECK_CHANNELS_LAST=false
  export GPU_CHECK_STEPS=1 GPU_CHECK_WARMUP=0
  export GPU_CHECK_E2E_BACKBONE=resnet10t GPU_CHECK_E2E_STEPS=3 GPU_CHECK_E2E_LINEAR_EPOCHS=2
else
  CONFIGS=("resnet50 224 256" "resnet18 96 256")
fi

STATUS=0
{
  echo "# gpu_check: $GPU"
  echo
  echo "command: scripts/gpu_check.sh --device $DEVICE$([ "$TINY" = 1 ] && echo ' --tiny')"
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), host load: $(uptime | sed 's/.*load average/load average/')"
  "$PY" -c "import torch, timm; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, timm {timm.__version__}')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  echo
} > "$TABLE"

for config in "${CONFIGS[@]}"; do
  read -r backbone size batch <<< "$config"
  export GPU_CHECK_BACKBONE="$backbone" GPU_CHECK_SIZE="$size" GPU_CHECK_BATCH="$batch"
  "$PY" -m suite run "$ROOT/experiments/gpu_check.yaml" --device "$DEVICE" \
    --tracking-uri "$URI" --workdir "$OUT/runs" || STATUS=1
  {
    echo "## $backbone, $size px, batch $batch"
    echo
    "$PY" -m suite.throughput "$ROOT/experiments/gpu_check.yaml" --tracking-uri "$URI"
  } >> "$TABLE" || STATUS=1
done

"$PY" -m suite run "$ROOT/experiments/gpu_check_e2e.yaml" --device "$DEVICE" \
  --tracking-uri "$URI" --workdir "$OUT/runs" || STATUS=1
{
  echo "## end to end: M2T on digits, training and evaluation on $DEVICE"
  echo
  echo '```'
  "$PY" -m suite plan "$ROOT/experiments/gpu_check_e2e.yaml" --tracking-uri "$URI"
  echo '```'
  echo
  echo "total wall time: $(( $(date +%s) - START )) s; exit status $STATUS"
} >> "$TABLE" || STATUS=1

echo
cat "$TABLE"
echo
echo "written: $TABLE"
exit $STATUS
