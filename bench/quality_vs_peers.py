"""Quality against the recipes people would otherwise use: the same job for every contender.

    python -m bench.quality_vs_peers tune --start a --lrs 1e-5 2e-5 5e-5       # ours, seed 42: lr chosen on dev
    python -m bench.quality_vs_peers variant --start a --name ibn5 --recipe_args "--ibn_w 5"  # candidate default
    python -m bench.quality_vs_peers run --start a --seeds 42 43 44 [--contenders ...]
    python -m bench.quality_vs_peers report

Every contender gets the same start model, training pairs, optimizer steps, batch size (32), learning rate (ours',
chosen on STS-B dev by ``tune``), schedule (linear, 10% warmup, AdamW, weight decay 0.01) and seeds; each saves a
checkpoint at the same steps and the one with the best STS-B **dev** Spearman is scored on the test suite (STS12–16
"all", STS-B, SICK-R; our evaluator, mean pooling). Test sets are read for that final table only.

Starts: ``a`` all-MiniLM-L6-v2 as released; ``b`` the same cut to its first 3 layers (``recipes/export_slice.py``):
a weaker encoder with room to learn; ``c`` start ``a`` with STS-B train and SICK train added as in-domain scored
sources (STS-B and SICK-R are then in-domain). Training data: the embedded SNLI dev + test pairs (19.7k).

Contenders:

- ``ours``: ``recipes/train_nli.py`` (CoSENT + in-batch negatives + AnglE, label map 1 / 0.5 / 0, its defaults);
- ``ours-hardneg``: the same with ``hard_negative_batches`` (a premise's pairs in one batch);
- ``st-combined``: ``SentenceTransformerTrainer`` with ``CoSENTLoss`` + ``AnglELoss`` on every pair and
  ``MultipleNegativesRankingLoss`` on the positive pairs (``bench/peers/st_train.py``);
- ``st-mnrl``: its recommended NLI set-up, ``MultipleNegativesRankingLoss`` on (premise, entailment,
  contradiction) triplets with the no-duplicates sampler (same steps and batch: the triplets are cycled);
- ``angle``: AnglE's own trainer (``angle-emb`` 0.6.1, in ``.venv-angle``: ``bench/peers/setup_angle_venv.sh``)
  with its NLI settings (cosine 0, ibn 30, angle 1; entailment 1 / contradiction 0, neutral dropped), mean pooling;
- ``raw-labels``: ours with the original bug, raw NLI class ids as scores.

Runs are resumable: each writes ``bench/results/quality_runs/<start>/<contender>_lr<lr>_seed<seed>.json`` and is
skipped when that file exists. ``report`` writes ``bench/results/quality_vs_peers.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.jobs import (
    ANGLE_PYTHON,
    BATCH,
    CHECKPOINTS,
    CONTENDERS,
    RAW_LABELS,
    REPO,
    RUNS,
    STARTS,
    WORK,
    start_model,
)


def training_pairs(start: str) -> tuple[Path, Path, int]:
    """The start's training pairs as jsonl (the rows our loader reads, NLI labels kept by name), the NLI
    triplets, and the number of optimizer steps: one epoch of the pairs."""
    from ese_trainer.data.sources import TrainSource, load_train_sources

    folder = WORK / "data"
    pairs_file, triplets_file = folder / f"{start}_pairs.jsonl", folder / f"{start}_triplets.jsonl"
    specs = [TrainSource.parse(entry, index) for index, entry in enumerate(STARTS[start].sources)]
    if not pairs_file.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        pairs, counts = load_train_sources(specs, seed=0)
        names = [count.name if spec.kind == "sts" else "nli" for spec, count in zip(specs, counts)]
        label_of = {1.0: "entailment", 0.5: "neutral", 0.0: "contradiction"}
        with pairs_file.open("w") as handle:
            for row in pairs:
                source = names[row["source"]]
                handle.write(json.dumps({"sentence1": row["sentence1"], "sentence2": row["sentence2"],
                                         "score": row["score"], "source": source,
                                         "label": label_of[row["score"]] if source == "nli" else None}) + "\n")
        by_premise: dict[str, dict[str, str]] = {}
        for row in pairs:
            if names[row["source"]] == "nli" and row["score"] != 0.5:
                by_premise.setdefault(row["sentence1"], {}).setdefault(label_of[row["score"]], row["sentence2"])
        with triplets_file.open("w") as handle:
            for premise, hypotheses in by_premise.items():
                if {"entailment", "contradiction"} <= set(hypotheses):
                    handle.write(json.dumps({"anchor": premise, "positive": hypotheses["entailment"],
                                             "negative": hypotheses["contradiction"]}) + "\n")
    rows = sum(1 for _ in pairs_file.open())
    return pairs_file, triplets_file, rows // BATCH


def sts_source_names(start: str) -> list[str]:
    return [source["name"] for source in STARTS[start].sources if source["kind"] == "sts"]


def run_ours(start: str, contender: str, lr: float, seed: int, steps: int, output_dir: Path,
             recipe_args: list[str] = ()) -> Path:
    """Our recipe (``recipe_args`` appended: a tuning variant), selecting its best checkpoint on STS-B dev itself;
    returns the released folder."""
    save_steps = max(1, steps // CHECKPOINTS)
    sources = [dict(source) for source in STARTS[start].sources]
    extra = []
    if contender == "raw-labels":
        extra = ["--label_map", json.dumps(RAW_LABELS), "--ibn_positive_threshold", "0.5"]
    if contender == "ours-hardneg":
        extra = ["--hard_negative_batches", "true"]
    command = [sys.executable, "recipes/train_nli.py", "--config", "configs/smoke_snli.yaml",
               "--model_name_or_path", start_model(start), "--train_datasets", *map(json.dumps, sources),
               "--max_steps", str(steps), "--learning_rate", str(lr), "--seed", str(seed),
               "--per_device_train_batch_size", str(BATCH), "--warmup_steps", "0.1", "--weight_decay", "0.01",
               "--eval_steps", str(save_steps), "--save_steps", str(save_steps), "--eval_on_start", "false",
               "--save_total_limit", "2", "--suite_before_training", "false", "--sts_tasks", "STSBenchmark",
               "--output_dir", str(output_dir), "--disable_tqdm", "true", *extra, *recipe_args]
    subprocess.run(command, cwd=REPO, check=True)
    return output_dir


def run_peer(start: str, contender: str, lr: float, seed: int, steps: int, output_dir: Path) -> list[Path]:
    """A peer's own trainer; returns its checkpoint folders."""
    pairs_file, triplets_file, _ = training_pairs(start)
    save_steps = max(1, steps // CHECKPOINTS)
    common = ["--learning_rate", str(lr), "--batch_size", str(BATCH), "--max_steps", str(steps),
              "--seed", str(seed), "--save_steps", str(save_steps)]
    if contender.startswith("st-"):
        command = [sys.executable, "bench/peers/st_train.py", "--model", start_model(start),
                   "--pairs_jsonl", str(pairs_file), "--triplets_jsonl", str(triplets_file),
                   "--sts_sources", *sts_source_names(start), "--mode", contender.removeprefix("st-"),
                   "--output_dir", str(output_dir), "--warmup_ratio", "0.1", "--weight_decay", "0.01", *common]
    else:
        angle_file = output_dir.parent / f"{start}_angle_pairs.jsonl"
        with pairs_file.open() as source, angle_file.open("w") as target:
            for line in source:
                row = json.loads(line)
                if row["source"] == "nli" and row["label"] == "neutral":
                    continue  # AnglE's NLI practice: entailment 1, contradiction 0, neutral not used
                target.write(json.dumps({"text1": row["sentence1"], "text2": row["sentence2"],
                                         "label": row["score"]}) + "\n")
        if not ANGLE_PYTHON.is_file():
            subprocess.run(["bash", "bench/peers/setup_angle_venv.sh", ".venv-angle"], cwd=REPO, check=True)
        command = [str(ANGLE_PYTHON), "bench/peers/angle_train.py", "--model", start_model(start),
                   "--train_jsonl", str(angle_file), "--output_dir", str(output_dir), "--pooling_strategy", "avg",
                   "--cosine_w", "0", "--ibn_w", "30", "--angle_w", "1", "--warmup_steps", "0.1",
                   "--weight_decay", "0.01", "--logging_steps", "50", "--threads", str(os.cpu_count()), *common]
    subprocess.run(command, cwd=REPO, check=True)
    return sorted(output_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))


def load_encoder(folder: Path, tokenizer_source: str):
    from transformers import AutoModel, AutoTokenizer

    model_folder = folder if (folder / "config.json").is_file() else folder / "0_Transformer"
    tokenizer_folder = model_folder if (model_folder / "tokenizer.json").is_file() else tokenizer_source
    return AutoModel.from_pretrained(model_folder).eval(), AutoTokenizer.from_pretrained(tokenizer_folder)


def score(folder: Path, tokenizer_source: str, tasks: dict) -> dict[str, float]:
    from ese_trainer.evaluation.sts import evaluate_sts

    model, tokenizer = load_encoder(folder, tokenizer_source)
    return evaluate_sts(model, tokenizer, tasks, "mean", 128, 128, show_progress=False)


def suite_and_dev():
    from ese_trainer.data import STS_TASKS, load_sts_pairs, load_sts_task

    dev = {"dev": load_sts_pairs("data/STS/STSBenchmark/sts-dev.csv", name="dev")}
    return {task: load_sts_task(task) for task in STS_TASKS}, dev


def run_one(start: str, contender: str, lr: float, seed: int, variant: str = "", recipe_args: list[str] = ()) -> dict:
    """Train, select on dev, score on the suite; the record is written to ``quality_runs``. ``variant`` names
    ``recipe_args`` given to our recipe (a candidate default, tuned on dev)."""
    label = f"{contender}+{variant}" if variant else contender
    record_file = RUNS / start / f"{label}_lr{lr:g}_seed{seed}.json"
    if record_file.is_file():
        return json.loads(record_file.read_text())
    _, _, steps = training_pairs(start)
    output_dir = WORK / "runs" / start / f"{label}_lr{lr:g}_seed{seed}"
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)
    suite, dev = suite_and_dev()
    started = time.perf_counter()
    print(f"== start {start}, {label}, lr {lr:g}, seed {seed}, {steps} steps {' '.join(recipe_args)}", flush=True)
    if contender.startswith("ours") or contender == "raw-labels":
        released = run_ours(start, contender, lr, seed, steps, output_dir, list(recipe_args))
        state = json.loads((released / "trainer_state.json").read_text())
        dev_by_step = {entry["step"]: entry["eval_sts_dev_spearman"] for entry in state["log_history"]
                       if "eval_sts_dev_spearman" in entry}
        selected_step = int(Path(state["best_model_checkpoint"]).name.split("-")[1])
        selected = released
    else:
        checkpoints = run_peer(start, contender, lr, seed, steps, output_dir)
        dev_by_step = {int(path.name.split("-")[1]): score(path, start_model(start), dev)["dev"]
                       for path in checkpoints}
        selected_step = max(dev_by_step, key=dev_by_step.get)
        selected = output_dir / f"checkpoint-{selected_step}"
    train_seconds = time.perf_counter() - started
    results = score(selected, start_model(start), suite)
    record = {"start": start, "contender": label, "recipe_args": list(recipe_args), "learning_rate": lr,
              "seed": seed, "steps": steps,
              "batch": BATCH, "dev_by_step": dev_by_step, "selected_step": selected_step,
              "selected_dev": dev_by_step[selected_step], "test": results,
              "train_and_select_seconds": round(train_seconds, 1)}
    record_file.parent.mkdir(parents=True, exist_ok=True)
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    for checkpoint in output_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint, ignore_errors=True)
    print(f"   dev {record['selected_dev']:.2f} at step {selected_step}; 7-task avg {results['avg']:.2f}", flush=True)
    return record


def start_row(start: str) -> dict[str, float]:
    """The untrained start model on the suite (cached)."""
    cache = RUNS / start / "start_model.json"
    if not cache.is_file():
        suite, dev = suite_and_dev()
        scores = score(Path(start_model(start)), start_model(start), {**suite, **dev})  # one load, one pass
        scores["avg"] = statistics.mean(scores[task] for task in suite)  # the 7 test tasks only, not dev
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(scores, indent=2) + "\n")
    return json.loads(cache.read_text())


def tuned_lr(start: str) -> float:
    choice = RUNS / start / "tuned_lr.json"
    if not choice.is_file():
        raise SystemExit(f"start {start}: no learning rate chosen yet; run: python -m bench.quality_vs_peers tune "
                         f"--start {start} --lrs ...")
    return json.loads(choice.read_text())["learning_rate"]


def tune(start: str, lrs: list[float], seed: int) -> None:
    """Ours at each learning rate (one seed); the best STS-B dev score picks the rate every contender gets."""
    records = [run_one(start, "ours", lr, seed) for lr in lrs]
    best = max(records, key=lambda record: record["selected_dev"])
    choice = {"learning_rate": best["learning_rate"], "chosen_on": "STS-B dev (best checkpoint)", "seed": seed,
              "candidates": {f"{record['learning_rate']:g}": record["selected_dev"] for record in records}}
    (RUNS / start / "tuned_lr.json").write_text(json.dumps(choice, indent=2) + "\n")
    print(f"start {start}: learning rate {best['learning_rate']:g} (dev {best['selected_dev']:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    tune_parser = commands.add_parser("tune")
    tune_parser.add_argument("--start", choices=STARTS, required=True)
    tune_parser.add_argument("--lrs", type=float, nargs="+", required=True)
    tune_parser.add_argument("--seed", type=int, default=42)
    run_parser = commands.add_parser("run")
    run_parser.add_argument("--start", choices=STARTS, required=True)
    run_parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    run_parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    variant_parser = commands.add_parser("variant", help="ours with candidate defaults, at the tuned learning rate")
    variant_parser.add_argument("--start", choices=STARTS, required=True)
    variant_parser.add_argument("--name", required=True)
    variant_parser.add_argument("--seed", type=int, default=42)
    variant_parser.add_argument("--recipe_args", required=True, help="e.g. '--ibn_w 5' (quoted: one argument)")
    commands.add_parser("report")
    args = parser.parse_args()
    if args.command == "tune":
        start_row(args.start)
        tune(args.start, args.lrs, args.seed)
    elif args.command == "run":
        start_row(args.start)
        lr = tuned_lr(args.start)
        for seed in args.seeds:
            for contender in args.contenders:
                run_one(args.start, contender, lr, seed)
    elif args.command == "variant":
        run_one(args.start, "ours", tuned_lr(args.start), args.seed, args.name, shlex.split(args.recipe_args))
    else:
        from bench.quality_report import write_report

        write_report()


if __name__ == "__main__":
    main()
