#!/usr/bin/env bash
# Create (or verify) a separate virtualenv holding AnglE's own trainer
# (PyPI angle-emb==0.6.1) for use as a peer contender in the benchmark.
#
# Usage: bash bench/peers/setup_angle_venv.sh [VENV_DIR]   (default: .venv-angle)
#
# Why a separate venv: angle-emb 0.6.1 pins transformers==5.3.0 (and peft==0.18.1,
# bitsandbytes==0.49.2); the project's .venv runs transformers 5.24.
# torch is installed FIRST and pinned (==2.13.0, the CPU wheel on local disk) via a
# constraints file, so that no later requirement can pull a multi-GB CUDA torch.
# Idempotent: if the venv already imports angle_emb 0.6.1 with torch 2.13.0 it exits 0.
#
# bitsandbytes 0.49.2 installs and imports on CPU. On CPUs with AVX512-BF16 its import
# logs "Failed to load CPU gemm_4bit_forward from kernels-community: No module named
# 'kernels'" (bitsandbytes/backends/cpu/ops.py ~L229-240, a best-effort try/except).
# It is harmless: it only concerns 4-bit CPU GEMM, which full fine-tuning never uses.
# We deliberately do NOT install `kernels`: it would fetch code from the Hugging Face
# Hub at run time, which is unreachable here.
set -euo pipefail

VENV="${1:-.venv-angle}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
ANGLE_VERSION="0.6.1"

log() { echo "[setup_angle_venv] $*"; }

check() {
  [ -x "$VENV/bin/python" ] || return 1
  "$VENV/bin/python" - "$TORCH_VERSION" "$ANGLE_VERSION" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
import torch
assert torch.__version__.split("+")[0] == sys.argv[1], torch.__version__
assert version("angle-emb") == sys.argv[2]
# 0.6.x removed AngleDataTokenizer; AngleDataCollator tokenizes raw rows inside fit().
from angle_emb import AnglE, AngleDataCollator  # noqa: F401
import evaluate, scipy  # noqa: F401,E401  (our evaluator, for STS-B dev inside the trainer)
PY
}

if check; then
  log "ok: $VENV already has torch==$TORCH_VERSION and angle-emb==$ANGLE_VERSION"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi

CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"

pip_install() {
  # The host pip config lists file:// extra indexes that print one harmless
  # "Location ... is ignored" warning per package; drop only those lines.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS" "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

log "installing torch==$TORCH_VERSION (CPU wheel) first"
pip_install "torch==$TORCH_VERSION"

log "installing angle-emb==$ANGLE_VERSION and its pins"
pip_install "angle-emb==$ANGLE_VERSION"

# STS-B dev is scored inside AnglE's trainer by our evaluator (imported from the checkout): its own needs.
log "installing what our evaluator needs (evaluate, scipy)"
pip_install evaluate scipy

if check; then
  log "ok: $("$VENV/bin/python" -c 'import torch, transformers, peft; from importlib.metadata import version as v; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "angle-emb", v("angle-emb"), "bitsandbytes", v("bitsandbytes"))')"
else
  log "FAILED: angle_emb does not import in $VENV; see:"
  "$VENV/bin/python" -c 'from angle_emb import AnglE' || true
  exit 1
fi
