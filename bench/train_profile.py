"""Where a training step's time goes: ``torch.profiler`` over the packed training step of ``bench.train_throughput``.

    python -m bench.train_profile [--steps 8] [--batch 32] [--bf16] [--attention_dropout 0] [--fast_dropout]

The step is the bare packed loop's (the recipe's model and objective, collation, backward, clipping at norm 1,
fused AdamW) on the same SNLI dev rows, after 2 unprofiled warm-up steps. Self CPU time is summed per operator and
per kind of work: matmuls (attention's included), dropout's random masks, attention's softmax, the optimizer, the
embedding table's backward, casts and copies, and the rest (elementwise, norms, reductions, tokenising). The
profiler's per-op bookkeeping adds time to small operators, so the shares are a map of where to look, not a timing;
speeds are measured by ``bench.train_throughput``. Beside the matmuls' and the optimizer's profiled time stand their
floors (:mod:`bench.step_floor`: the profiled steps' GEMMs at their measured rates, the optimizer's memory traffic at
the measured bandwidth). ``--attention_dropout 0`` profiles the step with ``model.attention_dropout: 0``,
``--fast_dropout`` with ``model.fast_dropout``. Results:
``bench/results/train_profile[_bf16][_attention_dropout_0][_fast_dropout].{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench.machine import describe_machine
from bench.step_floor import gemm_floor, optimizer_floor
from bench.train_throughput import LEARNING_RATE, MAX_LENGTH, RESULTS, bare_step, load_rows, our_parts

# Kinds of work, matched on the operator's name in this order; the first match wins.
KINDS = (
    ("dropout masks", ("bernoulli", "dropout", "random_")),  # random_: fast dropout's 64-bit draws
    ("attention", ("scaled_dot_product", "flash_attention", "efficient_attention", "_softmax_backward", "softmax")),
    ("optimizer", ("adam", "clip_grad", "_foreach_norm", "zero_")),
    ("embedding table", ("embedding",)),
    ("matmul", ("addmm", "aten::mm", "bmm", "matmul", "linear", "mkldnn")),
    ("casts and copies", ("aten::to", "_to_copy", "copy_", "contiguous", "clone", "cat", "index", "pad", "split")),
)
WARM_UP_STEPS = 2


def kind_of(name: str) -> str:
    """The kind of work an operator does (``KINDS``), or "elementwise and other"."""
    lowered = name.lower()
    for kind, patterns in KINDS:
        if any(pattern in lowered for pattern in patterns):
            return kind
    return "elementwise and other"


def summarise_operators(averages, per: int = 1, key: str = "self_ms") -> tuple[list[dict], dict[str, float], float]:
    """The profiled operators by self CPU time under ``key`` (ms, divided by ``per``: the steps profiled), heaviest
    first, with their kind and calls (also divided by ``per``); the ms of each kind of work; their total."""
    operators = sorted(({"name": event.key, "kind": kind_of(event.key), "calls": event.count // per,
                         key: event.self_cpu_time_total / 1e3 / per} for event in averages
                        if event.self_cpu_time_total > 0), key=lambda op: -op[key])
    kinds: dict[str, float] = {}
    for op in operators:
        kinds[op["kind"]] = kinds.get(op["kind"], 0.0) + op[key]
    return operators, kinds, sum(op[key] for op in operators)


def profiled_steps(steps: int, batch: int, bf16: bool, attention_dropout: float | None = None,
                   fast_dropout: bool = False) -> tuple[list, float, dict]:
    """Profile ``steps`` packed training steps after the warm-up; the operators' averages, the seconds per step and
    the floors of those steps (ms per step: ``matmul`` for their GEMMs, ``optimizer`` for its memory traffic)."""
    from ese_trainer.data.collator import RowCollator
    from ese_trainer.training.training_model import TrainingModel

    rows, sampler = load_rows(steps + WARM_UP_STEPS, batch)
    batches = list(sampler)
    tokenizer, encoder, objective = our_parts(packed=True, attention_dropout=attention_dropout,
                                              fast_dropout=fast_dropout)
    training_model = TrainingModel(encoder, objective).train()
    collate = RowCollator(tokenizer, MAX_LENGTH)
    parameters = [p for p in training_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE, weight_decay=0.0, fused=True)

    def step(indices: list[int]) -> None:
        bare_step(training_model, collate([rows[index] for index in indices]), parameters, optimizer, bf16)

    for indices in batches[:WARM_UP_STEPS]:
        step(indices)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        started = time.perf_counter()
        for indices in batches[WARM_UP_STEPS:]:
            step(indices)
        seconds = (time.perf_counter() - started) / steps
    lengths = [[int(n) for n in collate([rows[index] for index in indices])["attention_mask"].sum(1)]
               for indices in batches[WARM_UP_STEPS:]]
    floors = {"matmul": 1e3 * gemm_floor(encoder.config, lengths, bf16)["total_seconds"] / steps,
              "optimizer": 1e3 * optimizer_floor(sum(p.numel() for p in parameters), 1)["seconds"]}
    return list(profiler.key_averages()), seconds, floors


def plot_kinds(kinds: dict[str, float], title: str, path, xlabel: str = "self CPU ms per step") -> None:
    """Horizontal bars: milliseconds (per step, by default) for each kind of work."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(kinds.items(), key=lambda item: item[1])
    figure, axis = plt.subplots(figsize=(6, 3))
    axis.barh([kind for kind, _ in ordered], [value for _, value in ordered], color="tab:blue")
    axis.set(title=title, xlabel=xlabel)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32, help="rows per batch")
    parser.add_argument("--top", type=int, default=25, help="operators listed")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CPU: AVX512-bf16)")
    parser.add_argument("--attention_dropout", type=float, default=None, help="model.attention_dropout")
    parser.add_argument("--fast_dropout", action="store_true", help="model.fast_dropout")
    parser.add_argument("--output_dir", default=str(RESULTS), help="where the records go")
    args = parser.parse_args()
    averages, seconds_per_step, floors = profiled_steps(args.steps, args.batch, args.bf16, args.attention_dropout,
                                                        args.fast_dropout)
    operators, kinds, total = summarise_operators(averages, per=args.steps, key="self_ms_per_step")
    dropout = ("" if args.attention_dropout is None else f" --attention_dropout {args.attention_dropout:g}") + (
        " --fast_dropout" if args.fast_dropout else "")
    command = f"python -m bench.train_profile --steps {args.steps} --batch {args.batch}" + (
        " --bf16" if args.bf16 else "") + dropout
    machine = describe_machine()
    stem = "train_profile" + ("_bf16" if args.bf16 else "") + dropout.replace(" --", "_").replace(" ", "_")
    payload = {"command": command, "machine": machine, "bf16": args.bf16, "steps": args.steps, "batch": args.batch,
               "attention_dropout": args.attention_dropout, "fast_dropout": args.fast_dropout,
               "seconds_per_step_profiled": seconds_per_step,
               "self_ms_per_step_total": total, "kinds_ms_per_step": kinds, "floor_ms_per_step": floors,
               "operators": operators}
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    setting = ("bf16 autocast" if args.bf16 else "fp32") + (
        "" if args.attention_dropout is None else f", attention dropout {args.attention_dropout:g}") + (
        ", fast dropout" if args.fast_dropout else "")
    lines = [f"# Where a packed training step's time goes ({setting}, CPU)", "",
             f"Command: `{command}`  ", f"Machine: {machine}", "",
             f"{args.steps} profiled steps of {args.batch} SNLI dev rows after {WARM_UP_STEPS} warm-up steps, "
             f"{seconds_per_step:.2f} s per step under the profiler; self CPU time "
             f"{total:.0f} ms per step summed over operators.", "",
             "| kind of work | ms per step | share | floor, ms per step |", "|---|---|---|---|"]
    lines += [f"| {kind} | {value:.0f} | {100 * value / total:.1f}% | "
              + (f"{floors[kind]:.0f} |" if kind in floors else "|")
              for kind, value in sorted(kinds.items(), key=lambda item: -item[1])]
    outside = next(op for op in operators if op["kind"] != "matmul")
    lines += ["", f"Matmuls take {100 * kinds.get('matmul', 0.0) / total:.1f}% of the step; the largest operator "
              f"outside them is `{outside['name']}` ({outside['kind']}, "
              f"{100 * outside['self_ms_per_step'] / total:.1f}%)."]
    lines += ["", f"Top {args.top} operators by self CPU time:", "",
              "| operator | kind | calls per step | self ms per step | share |", "|---|---|---|---|---|"]
    lines += [f"| `{op['name']}` | {op['kind']} | {op['calls']} | {op['self_ms_per_step']:.1f} | "
              f"{100 * op['self_ms_per_step'] / total:.1f}% |" for op in operators[:args.top]]
    (output_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    plot_kinds(kinds, f"packed training step, {setting}", output_dir / f"{stem}.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
