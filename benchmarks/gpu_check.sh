#!/usr/bin/env bash
# The GPU check of the performance work: one prepared script of a few minutes, run from the source
# tree with the machine's own PyTorch (no virtual environment, no installs; it needs torch,
# torchvision, timm, transformers, tokenizers, sentencepiece, scikit-learn, pillow, pyyaml, tqdm).
#
#   benchmarks/gpu_check.sh                 # all parts, bf16, ViT-B/16 at 224 px
#   benchmarks/gpu_check.sh --compile       # the same with torch.compile
#   BENCH_OUT=/tmp/b benchmarks/gpu_check.sh --only finetune pretrain
#
# First runs benchmarks/gpu_engine_check.py (tiny pre-training in bf16 and fp16, a resume compared
# bit for bit, fine-tuning and testing); then the bench.
# Writes the cuda slot of <out>/results.json and rebuilds <out>/RESULTS.md (CPU figures are kept).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT_DIR="${BENCH_OUT:-benchmarks}"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       TOKENIZERS_PARALLELISM=false

"$PY" - <<'PYEOF'
import torch, torchvision, timm, transformers
print(f"python torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, "
      f"transformers {transformers.__version__}")
if not torch.cuda.is_available():
    raise SystemExit("gpu_check.sh: PyTorch sees no GPU")
print(f"GPU: {torch.cuda.get_device_name()}, bf16 supported: {torch.cuda.is_bf16_supported()}")
PYEOF
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true

# The engine's GPU paths end to end first (bf16, fp16 + scaler, resume, fine-tuning, testing): fails loudly.
"$PY" benchmarks/gpu_engine_check.py --device cuda

"$PY" -m refers bench --device cuda --out "$OUT_DIR" "$@"
echo "gpu_check.sh: results in $OUT_DIR/results.json and $OUT_DIR/RESULTS.md"
