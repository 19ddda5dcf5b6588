#!/usr/bin/env bash
# Every CPU speed record of the "same texts" round, one benchmark after another, each alternating its own contenders
# within its run; the records land in bench/results/ (about 45 minutes on 2 cores). Run it on a quiet machine:
# nothing else may use the CPU meanwhile.
#
#   bash bench/speed_records.sh                 # the records
#   bash bench/speed_records.sh --smoke         # then `make smoke` and `make test` timed from a fresh clone (+25 min)
#   bash bench/speed_records.sh --check DIR     # every step at a tiny size into DIR: proves the scripts run, no timing
#
# Afterwards `python -m bench.report` rebuilds docs/benchmarks.md from the records.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
export HF_HUB_OFFLINE=1
smoke=0 check=0 out=() train=(--steps 20 --batch 32) repeats=3 profile=(--steps 8 --batch 32)
case "${1:-}" in
    --smoke) smoke=1 ;;
    --check) check=1 out=(--output_dir "${2:?--check needs a folder}") train=(--steps 2 --batch 4) repeats=1
             profile=(--steps 2 --batch 4) ;;
    "") ;;
    *) echo "usage: bash bench/speed_records.sh [--smoke | --check DIR]" >&2; exit 2 ;;
esac
step() { echo "== python -m $*" >&2; "$python" -m "$@" "${out[@]}"; }
# bf16 only where the CPU computes it natively (AVX512-BF16 or AMX): elsewhere torch emulates it, some 25x slower than
# fp32, and the bf16 records already in bench/results/ (each naming its machine) are kept.
bf16=$("$python" -c "from ese_trainer.training.run_start import cpu_computes_bf16; print(int(cpu_computes_bf16()))")
[ "$bf16" = 1 ] || echo "== this CPU has no native bf16: the bf16 steps are skipped" >&2
step_bf16() { if [ "$bf16" = 1 ]; then step "$@" --bf16; fi; }

step bench.train_throughput "${train[@]}" --repeats "$repeats"
step_bf16 bench.train_throughput "${train[@]}" --repeats "$repeats"
if [ "$check" = 1 ]; then
    step bench.eval_throughput --tasks STS16 --repeats 1
    step bench.compile_step --steps 3 --batch 4 --warmup 1
else
    step bench.eval_throughput --repeats 2
    step bench.compile_step --steps 20 --batch 32 --warmup 3
    step bench.compile_step --steps 20 --batch 32 --warmup 3 --attention_dropout 0
    step_bf16 bench.compile_step --steps 20 --batch 32 --warmup 3
fi
step bench.train_profile "${profile[@]}"
step_bf16 bench.train_profile "${profile[@]}"
step bench.train_profile "${profile[@]}" --attention_dropout 0
step_bf16 bench.train_profile "${profile[@]}" --attention_dropout 0
task=()
[ "$check" = 0 ] || task=(--task STS16)
step bench.eval_profile "${task[@]}"
step_bf16 bench.eval_profile "${task[@]}"

if [ "$smoke" = 1 ]; then  # the quick start as a newcomer runs it: a fresh clone, set-up included
    clone="$(mktemp -d)/ese-trainer"
    git clone --quiet . "$clone"
    (cd "$clone" && python3 bench/smoke_record.py)
    cp "$clone"/bench/results/smoke.* bench/results/
fi
