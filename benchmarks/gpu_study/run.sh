#!/usr/bin/env bash
# Run ON THE GPU MACHINE, from the repository root, with the .whl/ folder that `benchmarks/gpu_study/wheels.sh` made.
# Runs the whole embedded study at the size of training/study/gpu.toml on the GPU and brings back, in
# $OUT, everything but the weights: gpu_study.tar.gz (runs/gpu: world, run cards, results,
# analyses), study.log, device.txt. Back on your machine, `tar xzf` it at the repository root and
# `sinkprobe figures --out runs/gpu --figures figures/gpu` draws figures, PNGs and tables.
# θ_o's steps are fitted to PRETRAIN_SECONDS on this card (fit_steps.py, timed on the study's
# own batches); BUDGET bounds everything, so what finished (θ_o's card with its sink scores
# first) still comes back if the machine is slower than planned.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_study_out}
BUDGET=${BUDGET:-480}
PRETRAIN_SECONDS=${PRETRAIN_SECONDS:-180}
JOBS=${JOBS:-8}
WHEELS=${WHEELS:-.whl}
CONFIG=${CONFIG:-training/study/gpu.toml}
EXTRA=${EXTRA:-}  # e.g. --quick: a CPU dry run of this script (docs/real_data.md, "On a GPU")
mkdir -p "$OUT"
start=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  python3 -c "from importlib.metadata import version as v; print(*(f'{p} {v(p)}' for p in ('torch', 'transformers', 'transformer-lens')))"; } | tee "$OUT/device.txt"
SETS=()
if [[ -z $EXTRA ]]; then
  steps=$(timeout 150 python3 benchmarks/gpu_study/fit_steps.py "$CONFIG" "$PRETRAIN_SECONDS" runs/gpu 2>>"$OUT/study.log") \
    && SETS+=(--set "pretrain.steps=$steps")
  tail -1 "$OUT/study.log"
fi
left=$(( BUDGET - ($(date +%s) - start) ))
timeout "$left" python3 -m sinkprobe.cli study --out runs/gpu --figures runs/gpu/figures --jobs "$JOBS" ${EXTRA:---config "$CONFIG"} "${SETS[@]}" 2>&1 \
  | grep --line-buffered -v "Loading weights" | tee -a "$OUT/study.log"
echo "study exit ${PIPESTATUS[0]}; $(( $(date +%s) - start )) s in all" | tee -a "$OUT/study.log"
tar czf "$OUT/gpu_study.tar.gz" --exclude='runs/gpu/models/*/*.safetensors' --exclude='*.html' --exclude='plotly.min.js' --exclude='runs/gpu/states' runs/gpu
ls -la "$OUT"
