"""Where STS evaluation's time goes: ``torch.profiler`` over the suite's encoding of one task, and its compute floor.

    python -m bench.eval_profile [--task STSBenchmark] [--bf16]

Encodes every distinct sentence of the task's test split with all-MiniLM-L6-v2 as the suite does
(:func:`ese_trainer.evaluation.sts.encode`: length-sorted batches of 128, each packed where its padding pays), once
unprofiled (the wall time) and once under the profiler. Self CPU time is summed per operator and per kind of work
(``bench.train_profile.KINDS``). The compute floor is the forward GEMMs of those batches at their real lengths
(linear layers and attention's score and context products), each GEMM shape at this machine's measured rate
(:func:`bench.step_floor.gemm_floor`). Results: ``bench/results/eval_profile[_bf16].{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from bench.machine import describe_machine
from bench.step_floor import gemm_floor
from bench.train_profile import plot_kinds, summarise_operators
from bench.train_throughput import RESULTS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
BATCH_SIZE = 128


def main() -> None:
    from transformers import AutoModel, AutoTokenizer

    from ese_trainer.data import load_sts_task
    from ese_trainer.evaluation.sts import bf16_copy, encode
    from ese_trainer.hub_models import resolve_model_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="STSBenchmark")
    parser.add_argument("--sts_data_dir", default="data")
    parser.add_argument("--top", type=int, default=15, help="operators listed")
    parser.add_argument("--bf16", action="store_true", help="a bfloat16 copy of the model (bf16_full_eval)")
    parser.add_argument("--output_dir", default=str(RESULTS), help="where the records go")
    args = parser.parse_args()

    path = resolve_model_path(MODEL_ID)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    model = bf16_copy(model) if args.bf16 else model
    pairs = load_sts_task(args.task, args.sts_data_dir)
    sentences = list(dict.fromkeys(pairs.sentences1 + pairs.sentences2))
    lengths = sorted((len(ids) for ids in tokenizer(sentences, truncation=True, max_length=128)["input_ids"]),
                     reverse=True)  # encode()'s length-sorted batches
    real_tokens = sum(lengths)

    def run() -> None:
        encode(model, tokenizer, sentences, "mean", batch_size=BATCH_SIZE, show_progress=False)

    run()  # warm-up
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run()
    operators, kinds, total = summarise_operators(profiler.key_averages())
    gemms = gemm_floor(model.config, [lengths[i:i + BATCH_SIZE] for i in range(0, len(lengths), BATCH_SIZE)],
                       args.bf16, backward=False, fused_qkv=False)  # AutoModel: BERT's three projections
    floor = gemms["total_seconds"]
    achieved = gemms["total_flops"] / (kinds.get("matmul", 0.0) / 1e3)

    dtype = "bf16" if args.bf16 else "fp32"
    command = f"python -m bench.eval_profile --task {args.task}" + (" --bf16" if args.bf16 else "")
    machine = describe_machine()
    stem = "eval_profile" + ("_bf16" if args.bf16 else "")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{stem}.json").write_text(json.dumps({
        "command": command, "machine": machine, "dtype": dtype, "task": args.task, "sentences": len(sentences),
        "real_tokens": real_tokens, "seconds": seconds, "self_ms_total": total, "kinds_ms": kinds,
        "compute_floor": gemms, "compute_floor_seconds": floor, "times_floor": seconds / floor,
        "matmul_flops_per_second_in_profile": achieved, "operators": operators}, indent=2) + "\n")
    lines = [f"# Where STS evaluation's time goes ({dtype}, CPU)", "", f"Command: `{command}`  ", f"Machine: {machine}",
             "", f"{len(sentences)} distinct sentences of {args.task} test ({real_tokens} real tokens), batches of "
             f"{BATCH_SIZE}: {seconds:.2f} s unprofiled, {len(sentences) / seconds:.0f} sentences/s.", "",
             f"Compute floor: the forward GEMMs at real lengths, {gemms['total_flops'] / 1e9:.0f} GFLOP at their "
             f"measured rates = {floor:.2f} s; the encoding takes "
             f"**{seconds / floor:.1f}x** that. Under the profiler the matmuls ran at {achieved / 1e9:.0f} GFLOP/s "
             "(padding included in their work).", "",
             "| kind of work | self ms | share |", "|---|---|---|"]
    lines += [f"| {kind} | {value:.0f} | {100 * value / total:.1f}% |"
              for kind, value in sorted(kinds.items(), key=lambda item: -item[1])]
    lines += ["", f"Top {args.top} operators by self CPU time:", "",
              "| operator | kind | calls | self ms | share |", "|---|---|---|---|---|"]
    lines += [f"| `{op['name']}` | {op['kind']} | {op['calls']} | {op['self_ms']:.1f} | "
              f"{100 * op['self_ms'] / total:.1f}% |" for op in operators[:args.top]]
    (output_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    plot_kinds(kinds, f"STS evaluation ({args.task}), {dtype}", output_dir / f"{stem}.png", xlabel="self CPU ms")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
