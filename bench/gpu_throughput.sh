#!/usr/bin/env bash
# GPU training throughput, BERT-base shapes in bf16: ours packed vs. ours padded vs. sentence-transformers, as real
# tokens/s and MFU (bench/gpu_throughput.py says what each contender does). Writes bench/results/gpu_throughput.*.
#
#   make gpu-wheels                  # once, on a machine with the venv and PyPI: fills build/gpu_stack
#   bash bench/gpu_throughput.sh [--steps 30] [--batch 512] [--peak_tflops 989]
#
# On the GPU image (torch 2.11, transformers 5.17, sentence-transformers 6.0.1, Python 3.12, no network) it runs this
# source tree with the image's torch: the wheels in build/gpu_stack/wheels (the rest of the stack at the versions the
# tests run on, no torch) are installed into a temporary folder put ahead of the image's packages on PYTHONPATH, and
# the tokenizer is read from build/gpu_stack/tokenizer. Nothing is installed into the image and nothing is fetched;
# setup.cfg's torch>=2.13 is the CPU install's floor and is not consulted here. Carry build/gpu_stack with the tree.
# Elsewhere: a Python with a CUDA build of torch and this package's requirements, e.g.
#   make setup TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu126"
# (PYTHON=/path/to/python picks the interpreter). flash-attn is optional: with it, the packed run uses its varlen
# kernels and sentence-transformers its own padding-free path; without it, both use SDPA and the record says so.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3
stack=build/gpu_stack
if compgen -G "$stack/wheels/*.whl" > /dev/null; then
    site="${TMPDIR:-/tmp}/ese-gpu-stack"
    if "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$stack"/wheels/*.whl; then
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
        echo "carried wheels: $(cd "$stack/wheels" && ls ./*.whl | sed 's|^\./||; s/-py3.*//; s/-cp3.*//' | tr '\n' ' ')"
    else  # e.g. wheels fetched for another Python: the image's own transformers and sentence-transformers also run it
        echo "bench/gpu_throughput.sh: the wheels in $stack/wheels did not install into $python (see above); running" \
             "with its own packages instead (the record names their versions)" >&2
    fi
else
    echo "no carried wheels in $stack/wheels (make gpu-wheels): running with $python's own packages"
fi
if ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "bench/gpu_throughput.sh: $python sees no CUDA GPU (torch $("$python" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo missing)); run it on a GPU machine with a CUDA build of torch" >&2
    exit 2
fi
"$python" -c "import flash_attn" 2>/dev/null && echo "flash-attn: installed" || echo "flash-attn: not installed (SDPA for every contender)"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 "$python" -m bench.gpu_throughput --device cuda "$@"
