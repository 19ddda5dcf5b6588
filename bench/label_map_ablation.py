"""Ablation: the smoke recipe with the NLI label map vs. with raw NLI class ids fed as scores.

    python bench/label_map_ablation.py [--tag NAME] [--sts_data_dir data] [recipe overrides]

"raw" reproduces the original bug (raw ids as scores) in the row layout, within the recipe's [0, 1] score range:
raw ids 0/1/2 (entailment/neutral/contradiction) as scores give the ranking terms (CoSENT, AnglE — which depend
only on the order of the scores) the order of the map {entailment: 0, neutral: 0.5, contradiction: 1}, and, since
a text's role in its row follows its score (``positive_min_score`` 1.0, ``negative_max_score`` 0.0), they invert
the in-batch term's roles too: each premise's contradiction becomes its positive, its entailment its hard negative.
(AnglE's own ``int(label) != 0`` positives — ``positive_min_score`` 0.5, neutral too — would make a row per
neutral and contradiction hypothesis, about 1.5 pairs per row instead of 2.75: 1,000 rows would hold half the
pairs, so it is not used.) Both runs share the seed, the steps (``configs/smoke_snli.yaml``: 1,000 SNLI dev rows,
a premise with its hypotheses each, batch 32) and about the same pairs (the rows are grouped around a different
hypothesis; each run's rows, pairs and steps are recorded), and the base model's "before" row. Results go to
``bench/results/label_map_ablation[_TAG].{json,md}``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
VARIANTS = {
    "label map (entailment 1.0, neutral 0.5, contradiction 0.0)": [],
    "raw ids as scores (0 entailment, 1 neutral, 2 contradiction)": [
        "--label_map", json.dumps({"entailment": 0.0, "neutral": 0.5, "contradiction": 1.0}),
        "--suite_before_training", "false",
    ],
}


def train(name: str, extra: list[str], output_dir: Path) -> dict:
    command = [sys.executable, str(REPO / "recipes" / "train_nli.py"), "--config", "configs/smoke_snli.yaml",
               "--output_dir", str(output_dir), "--disable_tqdm", "true", *extra]
    print(f"== {name}\n$ {' '.join(command)}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    results = json.loads((output_dir / "eval_results.json").read_text())
    state = json.loads((output_dir / "trainer_state.json").read_text())
    rows = json.loads((output_dir / "data_counts.json").read_text())["sources"][0]["rows"]
    dev = {entry["step"]: entry["eval_sts_dev_spearman"] for entry in state["log_history"]
           if "eval_sts_dev_spearman" in entry}
    return {"before": results.get("before"), "after": results["after"], "sts_dev_by_step": dev,
            "rows": rows["rows"], "pairs": rows["ranking_pairs"], "steps": state["global_step"],
            "best_checkpoint": str(Path(state["best_model_checkpoint"]).relative_to(REPO)),
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    overrides = sys.argv[1:]
    if {"-h", "--help"} & set(overrides):  # not forwarded: the recipe would print its help and train nothing
        print(__doc__)
        return
    tag = ""
    if "--tag" in overrides:
        position = overrides.index("--tag")
        tag = "_" + overrides[position + 1]
        del overrides[position:position + 2]
    runs = {}
    for index, (name, extra) in enumerate(VARIANTS.items()):
        runs[name] = train(name, extra + overrides, REPO / "outputs" / f"label_map_ablation{tag}_{index}")
    before = next(run["before"] for run in runs.values() if run["before"])
    header = list(before)
    lines = ["| run | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|",
             "| base model (before) | " + " | ".join(f"{before[k]:.2f}" for k in header) + " |"]
    for name, run in runs.items():
        lines.append(f"| {name} | " + " | ".join(f"{run['after'][k]:.2f}" for k in header) + " |")
    mapped, raw = (run["after"]["avg"] for run in runs.values())
    command = "python bench/label_map_ablation.py " + " ".join(sys.argv[1:])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    payload = {"command": command.strip(), "machine": machine, "config": "configs/smoke_snli.yaml", "before": before,
               "runs": runs, "avg_gap_mapped_minus_raw": round(mapped - raw, 2)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"label_map_ablation{tag}.json").write_text(json.dumps(payload, indent=2) + "\n")
    summary = "\n".join([
        "# Label map ablation (smoke recipe, cosine Spearman x100)", "",
        f"Command: `{command.strip()}`  ", f"Machine: {machine}", "", *lines, "",
        f"7-task average: label map {mapped:.2f}, raw ids {raw:.2f} (gap {mapped - raw:+.2f}); "
        f"base model {before['avg']:.2f}.", "",
        "Training data: " + "; ".join(f"{name}: {run['rows']} rows ({run['pairs']} pairs), {run['steps']} steps"
                                      for name, run in runs.items()) + ".", "",
        "STS-B dev by step (model selection):", "",
        *(f"- {name}: " + ", ".join(f"step {step}: {value:.2f}" for step, value in run["sts_dev_by_step"].items())
          for name, run in runs.items()),
    ])
    (RESULTS / f"label_map_ablation{tag}.md").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
