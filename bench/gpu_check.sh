#!/usr/bin/env bash
# The GPU path in one go, on a machine with a CUDA GPU (target: under 8 minutes):
#   1. install the [gpu] extra (faiss-gpu-cu12 in place of faiss-cpu; a CUDA build of torch if the venv has none),
#   2. FAISS on the GPU over 1 M synthetic vectors (dim 128) against the CPU (bench/gpu_check.py faiss),
#   3. index UCM with --device cuda and check a sample of its embeddings against the CPU (gpu_check.py embeddings),
#   4. one epoch of `engine train --train-backbones` with AMP on the GPU.
# Every step is timed; results go to $OUT (default runs/gpu-check) as JSON lines + logs.
#
#   bash bench/gpu_check.sh                # on the GPU machine, from the repository root
#   bash bench/gpu_check.sh --dry-run      # no GPU: runs the Python checks in their CPU fallback, small sizes,
#                                          # skips installs and training (what a CPU-only CI can verify)
#   bash bench/gpu_check.sh --offline      # a GPU machine without network (nothing installed; the Python
#                                          # environment must already hold torch with CUDA and the project's deps):
#                                          # train first (TRAIN_CONFIG, e.g. a random-weights config when the
#                                          # pretrained weights are not there), index with that model on the GPU,
#                                          # check the embeddings; the FAISS step runs only if faiss sees a GPU
# Environment: DATA (UCM folder, default ../shared/data/ucm_captions), OUT, TORCH_INDEX_URL (where a CUDA torch
# comes from when the venv's torch has no CUDA; default the PyTorch cu128 index), PYTHON (default .venv/bin/python);
# --offline only: TRAIN_CONFIG (a model config JSON for `engine train --config`), TRAIN_ARGS (extra train flags).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
OFFLINE=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
[ "${1:-}" = "--offline" ] && OFFLINE=1
PYTHON=${PYTHON:-.venv/bin/python}
DATA=${DATA:-../shared/data/ucm_captions}
OUT=${OUT:-runs/gpu-check}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
START=$(date +%s)

step() {  # step NAME COMMAND...: run, time, log; a failing step stops the script with its log tail
  local name=$1; shift
  local begin=$(date +%s)
  echo "== $name"
  if ! "$@" > "$OUT/$name.log" 2>&1; then
    echo "FAILED: $name (log: $OUT/$name.log)"; tail -20 "$OUT/$name.log"; exit 1
  fi
  local seconds=$(( $(date +%s) - begin ))
  echo "{\"step\": \"$name\", \"seconds\": $seconds}" >> "$RESULTS"
  grep -h '^{' "$OUT/$name.log" >> "$RESULTS" || true
  echo "   ok in ${seconds}s"
}

if [ "$OFFLINE" = 1 ]; then
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    | tee "$OUT/gpu.txt"
  "$PYTHON" -c "import torch, sys; print('torch', torch.__version__, torch.cuda.get_device_name(0)) \
if torch.cuda.is_available() else sys.exit('torch sees no GPU')"
  if "$PYTHON" -c "import faiss, sys; sys.exit(0 if faiss.get_num_gpus() > 0 else 1)" 2>/dev/null; then
    step faiss "$PYTHON" -m bench.gpu_check faiss --vectors 1000000
  else
    echo "== faiss: skipped (this environment's faiss has no GPU support)"
    echo '{"step": "faiss", "skipped": "faiss without GPU support"}' >> "$RESULTS"
  fi
  CONFIG_ARGS=()
  [ -n "${TRAIN_CONFIG:-}" ] && CONFIG_ARGS=(--config "$TRAIN_CONFIG")
  # shellcheck disable=SC2086  # TRAIN_ARGS is a list of flags
  step train "$PYTHON" -m engine train "$DATA" --out "$OUT/train" "${CONFIG_ARGS[@]}" --train-backbones --amp \
    --device cuda --workers 4 --quiet ${TRAIN_ARGS:---epochs 1}
  step index "$PYTHON" -m engine index "$DATA" --out "$OUT/index" --model "$OUT/train/best" --device cuda \
    --overwrite
  step embeddings "$PYTHON" -m bench.gpu_check embeddings --index "$OUT/index" --sample 256
  echo "{\"step\": \"total\", \"seconds\": $(( $(date +%s) - START ))}" >> "$RESULTS"
  echo "offline GPU checks passed; results: $RESULTS"
  exit 0
fi

if [ ! -x "$PYTHON" ]; then
  make install
fi

if [ "$DRY_RUN" = 0 ]; then
  command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: not a CUDA machine (use --dry-run)"; exit 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  install_gpu() {
    # faiss-cpu and faiss-gpu-cu12 both install the `faiss` module: remove the CPU one first.
    "$PYTHON" -m pip uninstall -y faiss-cpu
    "$PYTHON" -m pip install -e ".[gpu]"
    if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
      "$PYTHON" -m pip install --force-reinstall --no-deps torch==2.13.0 torchvision==0.28.0 \
        --index-url "$TORCH_INDEX_URL"
    fi
    "$PYTHON" -c "import faiss, torch; assert faiss.get_num_gpus() > 0, 'faiss sees no GPU'; \
assert torch.cuda.is_available(), 'torch sees no GPU'; print(torch.cuda.get_device_name(0))"
  }
  step install install_gpu
  step faiss "$PYTHON" -m bench.gpu_check faiss --vectors 1000000
  step index-ucm "$PYTHON" -m engine index "$DATA" --out "$OUT/ucm-index" --device cuda --overwrite
  step embeddings "$PYTHON" -m bench.gpu_check embeddings --index "$OUT/ucm-index" --sample 256
  step train "$PYTHON" -m engine train "$DATA" --out "$OUT/train" --epochs 1 --train-backbones --amp \
    --device cuda --workers 4 --quiet
else
  echo "dry run: no installs, Python checks in CPU fallback at small sizes, no training"
  step faiss "$PYTHON" -m bench.gpu_check faiss --vectors 20000 --lists 256 --cpu-fallback
  SMALL="$OUT/ucm-small"
  if [ ! -d "$SMALL" ]; then
    "$PYTHON" - "$DATA" "$SMALL" <<'EOF'
import json, sys
from pathlib import Path
data, small = Path(sys.argv[1]), Path(sys.argv[2])
raw = json.loads((data / "dataset.json").read_text())
raw["images"] = raw["images"][::100]
small.mkdir(parents=True)
(small / "images").symlink_to((data / "images").resolve())
(small / "dataset.json").write_text(json.dumps(raw))
EOF
  fi
  step index-ucm "$PYTHON" -m engine index "$SMALL" --out "$OUT/ucm-index" --device cpu --test-time-views 1 \
    --overwrite
  step embeddings "$PYTHON" -m bench.gpu_check embeddings --index "$OUT/ucm-index" --sample 16 --cpu-fallback
fi

TOTAL=$(( $(date +%s) - START ))
echo "{\"step\": \"total\", \"seconds\": $TOTAL}" >> "$RESULTS"
echo "all checks passed in ${TOTAL}s; results: $RESULTS"
if [ "$DRY_RUN" = 0 ] && [ "$TOTAL" -gt 480 ]; then
  echo "note: over the 8-minute target"
fi
