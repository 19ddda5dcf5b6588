"""The quality comparison's tables and plot, from the run records of ``bench/quality_vs_peers.py``.

    python -m bench.quality_vs_peers report

Per start: the start model's row, then each contender's mean (± standard deviation over seeds, when there are
several) on every task and the 7-task average, the learning rate all contenders used (chosen on STS-B dev by
tuning ours) and the dev score of the checkpoints chosen. Writes ``bench/results/quality_vs_peers.{json,md,png}``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from bench.jobs import CONTENDERS, RESULTS, RUNS, STARTS
from bench.machine import describe_machine

TASKS = ("STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness", "avg")
HEADERS = ("STS12", "STS13", "STS14", "STS15", "STS16", "STS-B", "SICK-R", "avg")


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def collect() -> dict:
    """``{start: {"start_model": scores, "learning_rate": lr, "contenders": {name: [record, ...]}}}``: every
    start's records at its chosen learning rate."""
    summary = {}
    for start in STARTS:
        folder = RUNS / start
        if not (folder / "tuned_lr.json").is_file():
            continue
        tuned = json.loads((folder / "tuned_lr.json").read_text())
        lr = tuned["learning_rate"]
        contenders = {}
        for name in CONTENDERS:
            records = [json.loads(path.read_text()) for path in sorted(folder.glob(f"{name}_lr{lr:g}_seed*.json"))]
            if records:
                contenders[name] = records
        summary[start] = {"start_model": json.loads((folder / "start_model.json").read_text()),
                          "learning_rate": lr, "tuning": tuned, "contenders": contenders}
    return summary


def markdown(summary: dict) -> str:
    lines = ["# Quality against the recipes people would otherwise use", "",
             "Cosine Spearman x100 on the test sets (STS12–16 SentEval \"all\", STS-B, SICK-R), our evaluator, mean "
             "pooling; mean ± standard deviation over seeds. Every contender: the same start, training pairs, "
             "optimizer steps, batch 32, learning rate, schedule (linear, 10% warmup, AdamW, weight decay 0.01) and "
             "seeds; the checkpoint with the best STS-B **dev** score is the one scored. Command: "
             "`python -m bench.quality_vs_peers tune|run ...` then `python -m bench.quality_vs_peers report`.", "",
             f"Machine: {describe_machine()}", ""]
    for start, entry in summary.items():
        lines += [f"## Start ({start}): {STARTS[start].description}", "",
                  f"Learning rate {entry['learning_rate']:g} for every contender (ours' best STS-B dev score among "
                  + ", ".join(f"{lr}: {dev:.2f}" for lr, dev in entry["tuning"]["candidates"].items()) + ").", "",
                  "| model | seeds | steps | dev (chosen) | " + " | ".join(HEADERS) + " |",
                  "|---" * (len(HEADERS) + 4) + "|",
                  f"| start model | – | – | {entry['start_model']['dev']:.2f} | "
                  + " | ".join(f"{entry['start_model'][task]:.2f}" for task in TASKS) + " |"]
        for name, records in entry["contenders"].items():
            cells = [_cell([record["test"][task] for record in records]) for task in TASKS]
            lines.append(f"| {name} | {len(records)} | {records[0]['steps']} | "
                         f"{_cell([record['selected_dev'] for record in records])} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(summary), figsize=(5 * len(summary), 4), squeeze=False)
    for axis, (start, entry) in zip(axes[0], summary.items()):
        names = list(entry["contenders"])
        means = [statistics.mean(r["test"]["avg"] for r in entry["contenders"][n]) for n in names]
        errors = [statistics.stdev(r["test"]["avg"] for r in entry["contenders"][n])
                  if len(entry["contenders"][n]) > 1 else 0.0 for n in names]
        axis.bar(names, means, yerr=errors, color="tab:blue", capsize=3)
        axis.axhline(entry["start_model"]["avg"], color="grey", linestyle="--", label="start model")
        low = min(means + [entry["start_model"]["avg"]])
        axis.set_ylim(low - 3, max(means + [entry["start_model"]["avg"]]) + 1.5)
        axis.set(title=f"start ({start})", ylabel="7-task STS avg (Spearman x100)")
        axis.tick_params(axis="x", rotation=40)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report() -> None:
    summary = collect()
    if not summary:
        raise SystemExit("no tuned start yet: run `python -m bench.quality_vs_peers tune ...` first")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality_vs_peers.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    (RESULTS / "quality_vs_peers.md").write_text(text + "\n")
    plot(summary, RESULTS / "quality_vs_peers.png")
    print(text)
