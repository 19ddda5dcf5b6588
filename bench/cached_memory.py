"""Peak memory and step time vs. contrastive batch size, plain vs. cached (GradCache) training steps.

    python bench/cached_memory.py [--batches 16 32 64 128] [--minibatch 32] [--steps 3]

Each (mode, batch) runs in a fresh process: all-MiniLM-L6-v2, one batch of ``batch`` real SNLI dev rows (a premise
with its hypotheses: about 3.75 texts per row), drawn as the recipe draws a batch (``SourceBatchSampler``: no text
twice) and collated by ``RowCollator``; one ESETrainer training step (forward, loss, backward) repeated, the cached
mode encoding ``--minibatch`` texts at a time (``cache_minibatch_texts``). Peak memory is the rise of the process's
peak resident set (VmHWM, reset before the steps) over its resident set before them. Results:
``bench/results/cached_memory.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def snli_batch(batch_size: int, seed: int = 0) -> list[dict]:
    """The first batch of ``batch_size`` SNLI dev rows the recipe's sampler draws (one source, no text twice)."""
    from ese_trainer.data.batching import SourceBatchSampler
    from ese_trainer.data.collator import row_text_ids
    from ese_trainer.data.sources import TrainSource, load_train_sources

    source = TrainSource.parse({"source": str(REPO / "data" / "SNLI"), "split": "dev"}, 0)
    rows, _ = load_train_sources([source], seed)
    row_texts = [row_text_ids(row) for row in rows.select_columns(["anchor", "texts"])]
    sampler = SourceBatchSampler(rows["source"], row_texts, batch_size, [1.0], seed=seed)
    return [rows[index] for index in next(iter(sampler))]


def worker(mode: str, batch: int, minibatch: int, steps: int) -> dict:
    import torch
    from transformers import AutoModel, AutoTokenizer, TrainingArguments

    from ese_trainer.data.collator import RowCollator
    from ese_trainer.ese.arguments import ESEArguments
    from ese_trainer.hub_models import resolve_model_path
    from ese_trainer.losses.arguments import LossArguments
    from ese_trainer.modeling.encoding import SentenceEncoder
    from ese_trainer.training.build import build_objective
    from ese_trainer.training.trainer import ESETrainer

    torch.manual_seed(0)
    path = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    model.pooler.requires_grad_(False)
    collator = RowCollator(tokenizer, 128)
    inputs = collator(snli_batch(batch))
    texts = int(inputs["input_ids"].shape[0])
    loss_args = LossArguments(ibn_cache=mode == "cached", cache_minibatch_texts=minibatch)
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(output_dir=output_dir, use_cpu=True, report_to="none", remove_unused_columns=False)
        trainer = ESETrainer(SentenceEncoder(model, "mean"), build_objective(loss_args, ESEArguments(), model.config),
                             args=args, data_collator=collator, processing_class=tokenizer,
                             cache_minibatch_size=minibatch if mode == "cached" else None)
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); we call training_step directly
        trainer.training_step(trainer.model, inputs)  # warm-up: allocator pools, lazy initialisation
        model.zero_grad(set_to_none=True)
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        resident_before = _status_kib("VmRSS")
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            trainer.training_step(trainer.model, inputs)
            times.append(time.perf_counter() - started)
            model.zero_grad(set_to_none=True)
        peak = _status_kib("VmHWM")
    return {"mode": mode, "batch_rows": batch, "batch_texts": texts,
            "minibatch_texts": min(minibatch, texts) if mode == "cached" else texts,
            "step_seconds": statistics.median(times), "peak_rise_mib": round((peak - resident_before) / 1024, 1)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory_axis, time_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in ("plain", "cached"):
        mode_rows = [row for row in rows if row["mode"] == mode]
        batches, memory, seconds = zip(*((r["batch_rows"], r["peak_rise_mib"], r["step_seconds"]) for r in mode_rows))
        memory_axis.plot(batches, memory, marker="o", label=mode)
        time_axis.plot(batches, seconds, marker="o", label=mode)
    memory_axis.set(xscale="log", xlabel="contrastive batch (rows)", ylabel="peak memory rise (MiB)")
    time_axis.set(xscale="log", xlabel="contrastive batch (rows)", ylabel="step time (s)")
    memory_axis.legend()
    figure.suptitle("all-MiniLM-L6-v2 training step on CPU: plain vs. GradCache")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64, 128], help="rows per batch")
    parser.add_argument("--minibatch", type=int, default=32, help="texts per cached mini-batch")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.minibatch, args.steps)))
        return
    rows = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for batch in args.batches:
        for mode in ("plain", "cached"):  # alternating, so drift affects both modes alike
            command = [sys.executable, __file__, "--worker", mode, str(batch), "--minibatch", str(args.minibatch),
                       "--steps", str(args.steps)]
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            if result.returncode:
                raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    by_key = {(row["mode"], row["batch_rows"]): row for row in rows}
    lines = ["| batch (rows) | texts | plain peak MiB | cached peak MiB | cached/plain memory | plain step s | "
             "cached step s | cached/plain time |", "|---|---|---|---|---|---|---|---|"]
    for batch in args.batches:
        plain, cached = by_key[("plain", batch)], by_key[("cached", batch)]
        lines.append(f"| {batch} | {plain['batch_texts']} | {plain['peak_rise_mib']:.0f} | "
                     f"{cached['peak_rise_mib']:.0f} | "
                     f"{cached['peak_rise_mib'] / plain['peak_rise_mib']:.2f} | {plain['step_seconds']:.2f} | "
                     f"{cached['step_seconds']:.2f} | {cached['step_seconds'] / plain['step_seconds']:.2f} |")
    command = "python bench/cached_memory.py " + " ".join(sys.argv[1:])
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cached_memory.json").write_text(json.dumps(
        {"command": command.strip(), "machine": machine, "minibatch_texts": args.minibatch, "runs": rows}, indent=2))
    summary = "\n".join(["# Cached (GradCache) vs. plain training step, all-MiniLM-L6-v2 on CPU", "",
                         f"Command: `{command.strip()}`  ", f"Machine: {machine}; SNLI dev rows (a premise "
                         f"with its hypotheses), cached mini-batch {args.minibatch} texts; median of {args.steps} "
                         "steps.", "", *lines, ""])
    (RESULTS / "cached_memory.md").write_text(summary)
    plot(rows, RESULTS / "cached_memory.png")
    print(summary)


if __name__ == "__main__":
    main()
