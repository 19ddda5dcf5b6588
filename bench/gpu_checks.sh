#!/usr/bin/env bash
# The recipe on one GPU under FSDP2 (through the Trainer), DeepSpeed ZeRO-2 and plain bf16, each resumed once from a
# mid-run checkpoint (configs/smoke_snli.yaml, 6 steps, no evaluation); writes each check's run_info.json and verdict
# to bench/results/gpu_checks/ (bench/gpu_checks.py says what is checked). Stops at once, exit 2, without a CUDA GPU.
#
#   make gpu-wheels                  # once, on a machine with the venv and PyPI: fills build/gpu_stack
#   bash bench/gpu_checks.sh [--checks fsdp2 zero2 bf16] [--steps 6]
#
# As bench/gpu_throughput.sh: on the GPU image (torch 2.11, transformers 5.17, sentence-transformers 6.0.1, no
# network) the wheels in build/gpu_stack/wheels go into a temporary folder put ahead of the image's packages on
# PYTHONPATH; nothing is installed into the image and nothing is fetched. The recipe also needs accelerate, datasets,
# the all-MiniLM-L6-v2 package (ese_trainer.hub_models resolves the Hub id offline through it) and, for ZeRO-2,
# DeepSpeed: the script names whatever of these the machine lacks before it runs anything.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3
if ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    echo "bench/gpu_checks.sh: $python sees no CUDA GPU (torch $("$python" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo missing)); FSDP and DeepSpeed run only on GPUs: run it on a GPU machine" >&2
    exit 2
fi
stack=build/gpu_stack
if compgen -G "$stack/wheels/*.whl" > /dev/null; then
    site="${TMPDIR:-/tmp}/ese-gpu-stack"
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$stack"/wheels/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
missing=$("$python" - <<'PY'
import importlib.util
names = [name for name in ("accelerate", "datasets", "transformers", "sentence_transformers", "safetensors", "yaml")
         if importlib.util.find_spec(name) is None]
if not names:
    import os
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from ese_trainer.hub_models import resolve_model_path
        resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    except Exception as error:  # noqa: BLE001
        names.append(f"the all-MiniLM-L6-v2 model ({type(error).__name__}: {str(error).splitlines()[0]})")
print(", ".join(names))
PY
)
if [ -n "$missing" ]; then
    echo "bench/gpu_checks.sh: missing here: $missing; carry them as wheels in $stack/wheels" >&2
    exit 2
fi
"$python" -c "import deepspeed" 2>/dev/null || echo "DeepSpeed: not installed (the zero2 check will say so)"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 "$python" -m bench.gpu_checks "$@"
