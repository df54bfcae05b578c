#!/usr/bin/env bash
# Every GPU figure fvr_bench owes, in one run and one Markdown report (< 10 minutes on one H100/H200:
# the parts' limits add up to 570 s):
#   method benchmarks at paper scale (naive vs optimised, seconds and peak memory, measured in the
#   same run), the `gpu`-marked tests, metric throughput on the GPU, the whole pipeline serial vs overlapped.
#
#   bash bench/gpu_evidence.sh [report.md]        (default: bench/gpu_evidence.md)
#
# Needs a CUDA GPU and the project installed (`make install`, or PYTHONPATH=src with the
# dependencies). Each part has its own time limit, so one slow part cannot take the others' time;
# a part that fails or runs out of time is reported as such and the rest still runs.
# Whoever has a GPU runs it and commits the report.
set -uo pipefail
cd "$(dirname "$0")/.."
REPORT=${1:-bench/gpu_evidence.md}
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] && PYTHON=${PYTHON_OVERRIDE:-.venv/bin/python}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_evidence.sh needs a CUDA GPU (torch.cuda.is_available() is False); on a CPU use: make bench" >&2
  exit 2
fi
TMP=$(mktemp)

section() {  # section <title> <seconds> <command...>
  local title=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "## $title" >> "$TMP"
  echo '```' >> "$TMP"
  timeout "$limit" "$@" >> "$TMP" 2>&1
  local rc=$?
  echo '```' >> "$TMP"
  case $rc in
    0) echo "_ok, $((SECONDS - start)) s_" >> "$TMP" ;;
    124) echo "_stopped at its ${limit} s limit_" >> "$TMP" ;;
    *) echo "_failed (exit $rc) after $((SECONDS - start)) s_" >> "$TMP" ;;
  esac
  echo >> "$TMP"
}

{
  echo "# fvr_bench GPU evidence"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not found')"
  echo "- torch: $($PYTHON -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda, "available:", torch.cuda.is_available())')"
  echo
} > "$TMP"

section "VividFace, 81×512², paper-size DiT + VAE (naive vs benchmark/compile/channels_last/tiling)" 110 \
  "$PYTHON" bench/bench_vividface.py --repeats 2
section "BFVR-STC, 24×512², paper-size 3D VQGAN + lookup transformers (naive vs optimised)" 50 \
  "$PYTHON" bench/bench_bfvr_stc.py
section "SVFR, 81×512², SVD-xt UNet, pass 1 (50 steps) + pass 2 (30 steps), CFG 2 (naive = official schedule)" 150 \
  "$PYTHON" bench/bench_svfr.py --variants naive,optimised
section "IP-FVR, 24×720², VEnhancer UNet3D + ControlNet, 14 steps × 3 streams (naive = VEnhancer padding, streams one by one)" 130 \
  "$PYTHON" bench/bench_ip_fvr.py --variants naive,optimised
section "gpu-marked tests" 50 \
  "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider
section "Degradation and metric throughput on the GPU" 40 \
  "$PYTHON" bench/throughput.py
section "Whole pipeline, vividface_t1 offline set: serial loop vs overlap (prefetch thread + CPU-metric worker)" 40 \
  "$PYTHON" bench/pipeline.py --clips 2

mkdir -p "$(dirname "$REPORT")"
mv "$TMP" "$REPORT"
echo "report: $REPORT"
