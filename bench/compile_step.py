"""Compiled transformer layers vs. eager: compile time, steady-state step time, recompiles and graph breaks.

    python -m bench.compile_step [--steps 20] [--batch 32] [--warmup 3] [--bf16] [--attention_dropout 0]

Two copies of the recipe's packed training step (``bench.train_throughput``'s bare loop: collate, forward, backward,
clip at norm 1, fused AdamW), one loaded with ``model.compile_layers`` (``torch.compile`` of each transformer layer,
``dynamic=True``; packing, pooling and the packed attention stay eager), take the same SNLI dev batches, step by step
in alternation. Reported: the first step of each (the compiled one's includes compiling), the median step after
``warmup`` steps, the graphs compiled after the first step (recompiles: batches whose shapes the guards refused),
the graph breaks by reason (``torch._dynamo``'s counters), and one step's loss and gradients in eval mode (no
dropout: compiled dropout draws other random numbers), compiled against eager from the same weights.
Results: ``bench/results/compile_step[_bf16][_attention_dropout_0].{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from bench.machine import describe_machine
from bench.train_throughput import LEARNING_RATE, MAX_LENGTH, RESULTS, bare_step, load_rows, our_parts


def training_step(compiled: bool, attention_dropout: float | None):
    """The bare loop's model, optimizer and step function (``step(inputs, bf16)``)."""
    from ese_trainer.data.collator import RowCollator
    from ese_trainer.training.training_model import TrainingModel

    tokenizer, encoder, objective = our_parts(True, attention_dropout, compile_layers=compiled)
    model = TrainingModel(encoder, objective).train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE, weight_decay=0.0, fused=True)
    return model, RowCollator(tokenizer, MAX_LENGTH), lambda inputs, bf16: bare_step(model, inputs, parameters,
                                                                                       optimizer, bf16)


def eval_loss_and_gradients(model, inputs: dict, bf16: bool) -> tuple[float, dict[str, torch.Tensor]]:
    """One forward and backward without dropout: the loss and every parameter's gradient."""
    model.eval().zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(**inputs).loss
    loss.backward()
    gradients = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return float(loss), gradients


def graph_breaks() -> dict[str, int]:
    """Graph breaks so far, by the first line of their reason."""
    breaks: dict[str, int] = {}
    for reason, count in counters["graph_break"].items():
        key = reason.strip().splitlines()[0]
        breaks[key] = breaks.get(key, 0) + count
    return breaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="steps of each, warm-up included")
    parser.add_argument("--batch", type=int, default=32, help="rows per batch")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the steady-state median")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CPU: AVX512-bf16)")
    parser.add_argument("--attention_dropout", type=float, default=None, help="model.attention_dropout for both")
    parser.add_argument("--output_dir", default=str(RESULTS), help="where the records go")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        raise SystemExit(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    rows, sampler = load_rows(args.steps, args.batch)
    batches = list(sampler)
    eager_model, collate, eager_step = training_step(False, args.attention_dropout)
    compiled_model, _, compiled_step = training_step(True, args.attention_dropout)
    counters.clear()

    seconds: dict[str, list[float]] = {"eager": [], "compiled": []}
    graphs_after_first_step = 0
    for index, batch in enumerate(batches):
        inputs = collate([rows[i] for i in batch])
        for name, step in (("eager", eager_step), ("compiled", compiled_step)):  # alternating, step by step
            torch.manual_seed(index)
            started = time.perf_counter()
            step(inputs, args.bf16)
            seconds[name].append(time.perf_counter() - started)
        if index == 0:
            graphs_after_first_step = counters["stats"]["unique_graphs"]
        print(f"step {index + 1}: eager {seconds['eager'][-1]:.2f} s, compiled {seconds['compiled'][-1]:.2f} s",
              flush=True)
    graphs = counters["stats"]["unique_graphs"]
    breaks = graph_breaks()

    # the same weights in both, then one step without dropout (its eval-mode graphs come after the counts above)
    compiled_model.load_state_dict(eager_model.state_dict())
    check_inputs = collate([rows[i] for i in batches[0]])
    eager_loss, eager_grads = eval_loss_and_gradients(eager_model, check_inputs, args.bf16)
    compiled_loss, compiled_grads = eval_loss_and_gradients(compiled_model, check_inputs, args.bf16)
    # relative to the largest gradient of all (a key bias's gradient is rounding noise around 0)
    largest = max(float(grad.abs().max()) for grad in eager_grads.values())
    gradient_gap = max(float((compiled_grads[name] - grad).abs().max()) for name, grad in eager_grads.items()) / largest

    steady = {name: statistics.median(times[args.warmup:]) for name, times in seconds.items()}
    dropout = "" if args.attention_dropout is None else f" --attention_dropout {args.attention_dropout:g}"
    command = (f"python -m bench.compile_step --steps {args.steps} --batch {args.batch} --warmup {args.warmup}"
               + (" --bf16" if args.bf16 else "") + dropout)
    record = {"command": command, "machine": describe_machine(), "steps": args.steps, "batch": args.batch,
              "warmup": args.warmup, "bf16": args.bf16, "attention_dropout": args.attention_dropout,
              "seconds": seconds, "first_step_seconds": {name: times[0] for name, times in seconds.items()},
              "compile_seconds": seconds["compiled"][0] - seconds["eager"][0], "steady_step_seconds": steady,
              "steady_speedup": steady["eager"] / steady["compiled"], "graphs_compiled": graphs,
              "graphs_compiled_after_first_step": graphs - graphs_after_first_step, "graph_breaks": breaks,
              "eval_loss": {"eager": eager_loss, "compiled": compiled_loss},
              "eval_loss_gap": abs(compiled_loss - eager_loss), "largest_relative_gradient_gap": gradient_gap}
    stem = "compile_step" + ("_bf16" if args.bf16 else "") + dropout.replace(" --", "_").replace(" ", "_")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    summary = "\n".join([
        f"# Compiled transformer layers vs. eager ({'bf16 autocast' if args.bf16 else 'fp32'}"
        + ("" if args.attention_dropout is None else f", attention dropout {args.attention_dropout:g}") + ", CPU)",
        "", f"Command: `{command}`  ", f"Machine: {record['machine']}", "",
        f"{args.steps} packed training steps of {args.batch} SNLI dev rows each, eager and compiled alternating.", "",
        "| | first step (s) | median step after warm-up (s) |", "|---|---|---|",
        *(f"| {name} | {seconds[name][0]:.2f} | {steady[name]:.3f} |" for name in seconds), "",
        f"- compile time (first compiled step over the first eager one): {record['compile_seconds']:.1f} s",
        f"- steady-state speed-up: **{record['steady_speedup']:.2f}x**",
        f"- graphs compiled: {graphs}, of which after the first step (recompiles): "
        f"{record['graphs_compiled_after_first_step']}",
        f"- graph breaks: {sum(breaks.values())}"
        + "".join(f"; {count} x {reason}" for reason, count in breaks.items()),
        f"- eval-mode loss, eager {eager_loss:.6f} vs. compiled {compiled_loss:.6f} "
        f"(gap {record['eval_loss_gap']:.1e}); largest gradient gap {gradient_gap:.1e} of the largest gradient",
        ""])
    (output_dir / f"{stem}.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
