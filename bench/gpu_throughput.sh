#!/usr/bin/env bash
# GPU training throughput, BERT-base shapes in bf16: ours packed vs. ours padded vs. sentence-transformers, as real
# tokens/s and MFU (bench/gpu_throughput.py says what each contender does). Writes bench/results/gpu_throughput.*.
#
#   bash bench/gpu_throughput.sh [--steps 30] [--batch 128] [--peak_tflops 989]
#
# Needs a CUDA GPU and a Python with a CUDA build of torch and this package's requirements, e.g.
#   make setup TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu126"
# (PYTHON=/path/to/python picks another interpreter). flash-attn is optional: with it, the packed run uses its varlen
# kernels and sentence-transformers its padded ones; without it, both fall back to SDPA and the record says so.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3
if ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "bench/gpu_throughput.sh: $python sees no CUDA GPU (torch $("$python" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo missing)); run it on a GPU machine with a CUDA build of torch" >&2
    exit 2
fi
"$python" -c "import flash_attn" 2>/dev/null && echo "flash-attn: installed" || echo "flash-attn: not installed (SDPA for every contender)"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" "$python" -m bench.gpu_throughput --device cuda "$@"
