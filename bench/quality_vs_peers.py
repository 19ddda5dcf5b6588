"""Quality against the recipes people would otherwise use: the same job for every contender, choices on dev only.

    python -m bench.quality_vs_peers sweep --start b                      # ours' candidate objectives (dev only)
    python -m bench.quality_vs_peers sweep --start b --base w0-30-1        # options on top of one weighting
    python -m bench.quality_vs_peers tune --start b                        # every contender x the lr grid (dev)
    python -m bench.quality_vs_peers seeds --start b --seeds 43 44 --contenders ours st-mnrl
    python -m bench.quality_vs_peers score --start b                       # the test suite, chosen runs only
    python -m bench.quality_vs_peers report

The job (per start, ``bench/jobs.py``): the same start model, the same sources with one pass over each
(``EPOCHS``), batches of 32 of each contender's unit (a row: a premise with its hypotheses, or a triplet; or a
pair), linear schedule with 10% warmup, AdamW, weight decay 0.01, the same seeds. Every contender gets its own
learning rate, the best STS-B **dev** score of the start's grid (seed 42); 8 evenly spaced checkpoints per run and
the best by dev is the run's model. Test sets are read by ``score`` only, for the runs ``tune`` chose.

Starts: ``a`` all-MiniLM-L6-v2 as released; ``b`` the same cut to its first 3 layers (``recipes/export_slice.py``):
a weaker encoder with room to learn; ``c`` start ``a`` with STS-B train and SICK train as in-domain scored
sources. Training data: the embedded SNLI dev + test pairs (19.7k pairs; 7.2k premise rows).

Contenders (``bench.jobs.CONTENDERS``): ours (the recipe's defaults), ours with the seed's 1:1:1 weights,
sentence-transformers' trainer with MNRL or GISTEmbedLoss on (premise, entailment, contradiction) triplets (the
no-duplicates sampler) or with CoSENT + MNRL + AnglE on the pairs, AnglE's own trainer (angle-emb 0.6.1 in its own
virtualenv, ``bench/peers/setup_angle_venv.sh``), and ours with raw class ids (the original bug). At (c) the STS
sources are trained with CoSENT (ST: a dataset of their own, proportional sampler; AnglE: pairs in its one file).

Every run writes ``bench/results/quality_runs/<start>/<contender>_lr<lr>_seed<seed>.json`` (sweep runs under
``sweep/``) and is skipped when that file exists; its selected model is kept under ``outputs/quality/models``
until ``score`` reads it. ``report`` writes ``bench/results/quality_vs_peers.{json,md,png}`` and
``bench/results/objective_sweep.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from bench.jobs import (
    ANGLE_PYTHON,
    BATCH,
    CHECKPOINTS,
    CONTENDERS,
    EPOCHS,
    REPO,
    RUNS,
    STARTS,
    SWEEP,
    SWEEP_OPTIONS,
    WORK,
    Contender,
    RunRecord,
    start_model,
)
from bench.machine import describe_machine

DEV_FILE = "data/STS/STSBenchmark/sts-dev.csv"


def training_files(start: str) -> dict:
    """The start's training data for every trainer, from our loader (labels through the label map, one row per
    premise and positive): ``pairs.jsonl`` (every pair, NLI label kept by name), ``triplets.jsonl`` (premise,
    entailment, a contradiction of that premise), ``angle.jsonl`` (AnglE's format A: NLI without neutral, the STS
    pairs); and their sizes, for the step counts and texts per step."""
    from ese_trainer.data.rows import NEGATIVE, POSITIVE
    from ese_trainer.data.sources import TrainSource, load_train_sources

    folder = WORK / "data" / start
    meta_file = folder / "meta.json"
    if meta_file.is_file():
        return json.loads(meta_file.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    specs = [TrainSource.parse(entry, index) for index, entry in enumerate(STARTS[start].sources)]
    rows, counts = load_train_sources(specs, seed=0)
    names = [count.name if spec.kind == "sts" else "nli" for spec, count in zip(specs, counts)]
    label_of = {1.0: "entailment", 0.5: "neutral", 0.0: "contradiction"}
    sizes = {"rows": {}, "pairs": {}, "triplets": {}, "angle": 0, "row_texts": {}}
    negatives: dict[str, list[str]] = {}
    for row in rows:
        if names[row["source"]] == "nli":
            negatives.setdefault(row["anchor"], []).extend(
                text for text, role in zip(row["texts"], row["roles"]) if role == NEGATIVE)
    with (folder / "pairs.jsonl").open("w") as pairs, (folder / "triplets.jsonl").open("w") as triplets, \
            (folder / "angle.jsonl").open("w") as angle:
        seen: dict[str, int] = {}
        for row in rows:
            source = names[row["source"]]
            sizes["rows"][source] = sizes["rows"].get(source, 0) + 1
            sizes["row_texts"][source] = sizes["row_texts"].get(source, 0) + 1 + len(row["texts"])
            for text, score in zip(row["texts"], row["scores"]):
                label = label_of[score] if source == "nli" else None
                pairs.write(json.dumps({"sentence1": row["anchor"], "sentence2": text, "score": score,
                                        "source": source, "label": label}) + "\n")
                sizes["pairs"][source] = sizes["pairs"].get(source, 0) + 1
                if label != "neutral":
                    angle.write(json.dumps({"text1": row["anchor"], "text2": text, "label": score}) + "\n")
                    sizes["angle"] += 1
            if source == "nli" and POSITIVE in row["roles"] and negatives[row["anchor"]]:
                pool = negatives[row["anchor"]]  # a premise's contradictions, dealt over its entailments
                use = seen.get(row["anchor"], 0)
                seen[row["anchor"]] = use + 1
                positive = row["texts"][row["roles"].index(POSITIVE)]
                triplets.write(json.dumps({"anchor": row["anchor"], "positive": positive,
                                           "negative": pool[use % len(pool)]}) + "\n")
                sizes["triplets"]["nli"] = sizes["triplets"].get("nli", 0) + 1
    for name in names:
        if name != "nli":
            sizes["triplets"][name] = sizes["pairs"][name]
    meta_file.write_text(json.dumps(sizes, indent=2) + "\n")
    return sizes


def job_shape(start: str, contender: Contender) -> tuple[int, float]:
    """Optimizer steps of one pass over every source in batches of ``BATCH`` units, and texts per step."""
    sizes = training_files(start)
    if contender.trainer == "angle":
        return EPOCHS * (sizes["angle"] // BATCH), 2.0 * BATCH
    if contender.trainer == "ours":
        units, texts = sizes["rows"], sum(sizes["row_texts"].values()) / sum(sizes["rows"].values())
    elif contender.unit == "pairs":
        units, texts = sizes["pairs"], 2.0
    else:
        units = sizes["triplets"]
        texts = (3 * units["nli"] + 2 * sum(v for k, v in units.items() if k != "nli")) / sum(units.values())
    return EPOCHS * sum(count // BATCH for count in units.values()), texts * BATCH


def recipe_config(start: str, lr: float, seed: int, steps: int, output_dir: Path) -> dict:
    """Our recipe's config for the job (the recipe's defaults for everything else, the loss included)."""
    every = max(1, steps // CHECKPOINTS)
    return {"model_name_or_path": start_model(start), "pooling": "mean", "max_seq_length": 128,
            "train_datasets": [dict(source) for source in STARTS[start].sources],
            "sts_dev": DEV_FILE, "sts_tasks": "none", "suite_before_training": False, "output_dir": str(output_dir),
            "seed": seed, "per_device_train_batch_size": BATCH, "per_device_eval_batch_size": 64,
            "learning_rate": lr, "warmup_steps": 0.1, "weight_decay": 0.01, "num_train_epochs": EPOCHS,
            "logging_steps": 10, "eval_on_start": False, "eval_strategy": "steps", "eval_steps": every,
            "save_strategy": "steps", "save_steps": every, "save_total_limit": 2, "load_best_model_at_end": True,
            "metric_for_best_model": "sts_dev_spearman", "greater_is_better": True, "report_to": "none",
            "dataloader_pin_memory": False, "disable_tqdm": True}


def run_ours(start: str, contender: Contender, lr: float, seed: int, steps: int, output_dir: Path,
             extra: tuple[str, ...]) -> tuple[dict[int, float], Path]:
    config = output_dir / "job.yaml"
    config.write_text(yaml.safe_dump(recipe_config(start, lr, seed, steps, output_dir)))
    subprocess.run([sys.executable, "recipes/train_nli.py", "--config", str(config), *contender.recipe_args,
                    *extra], cwd=REPO, check=True)
    state = json.loads((output_dir / "trainer_state.json").read_text())
    dev = {entry["step"]: entry["eval_sts_dev_spearman"] for entry in state["log_history"]
           if "eval_sts_dev_spearman" in entry}
    return dev, output_dir


def run_peer(start: str, contender: Contender, lr: float, seed: int, steps: int, output_dir: Path
             ) -> tuple[dict[int, float], Path]:
    folder = WORK / "data" / start
    sts = [source["name"] for source in STARTS[start].sources if source["kind"] == "sts"]
    common = ["--learning_rate", str(lr), "--batch_size", str(BATCH), "--seed", str(seed),
              "--save_steps", str(max(1, steps // CHECKPOINTS)), "--weight_decay", "0.01"]
    if contender.trainer == "st":
        command = [sys.executable, "bench/peers/st_train.py", "--model", start_model(start), "--mode",
                   contender.st_mode, "--pairs_jsonl", str(folder / "pairs.jsonl"), "--triplets_jsonl",
                   str(folder / "triplets.jsonl"), "--sts_sources", *sts, "--epochs", str(EPOCHS),
                   "--output_dir", str(output_dir), "--warmup_ratio", "0.1", *common]
    else:
        if not ANGLE_PYTHON.is_file():
            subprocess.run(["bash", "bench/peers/setup_angle_venv.sh", ".venv-angle"], cwd=REPO, check=True)
        command = [str(ANGLE_PYTHON), "bench/peers/angle_train.py", "--model", start_model(start), "--train_jsonl",
                   str(folder / "angle.jsonl"), "--output_dir", str(output_dir), "--pooling_strategy", "avg",
                   "--cosine_w", "0", "--ibn_w", "30", "--angle_w", "1", "--warmup_steps", "0.1",
                   "--epochs", str(EPOCHS), "--logging_steps", "50", "--threads", str(os.cpu_count()), *common]
    subprocess.run(command, cwd=REPO, check=True)
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    dev_pairs = dev_task()
    dev = {int(path.name.split("-")[1]): score(path, start, dev_pairs)["dev"] for path in checkpoints}
    best = max(dev, key=dev.get)
    return dev, output_dir / f"checkpoint-{best}"


def load_encoder(folder: Path, start: str):
    from transformers import AutoModel, AutoTokenizer

    import ese_trainer.modeling  # noqa: F401  (an MoE run's folder)

    model_folder = folder if (folder / "config.json").is_file() else folder / "0_Transformer"
    tokenizer_folder = model_folder if (model_folder / "tokenizer.json").is_file() else start_model(start)
    return AutoModel.from_pretrained(model_folder).eval(), AutoTokenizer.from_pretrained(tokenizer_folder)


def score(folder: Path, start: str, tasks: dict) -> dict[str, float]:
    from ese_trainer.evaluation.sts import evaluate_sts

    model, tokenizer = load_encoder(folder, start)
    return evaluate_sts(model, tokenizer, tasks, "mean", 128, 128, show_progress=False)


def dev_task() -> dict:
    from ese_trainer.data import load_sts_pairs

    return {"dev": load_sts_pairs(DEV_FILE, name="dev")}


def record_path(start: str, label: str, lr: float, seed: int, sweep: bool = False) -> Path:
    return RUNS / start / ("sweep" if sweep else "") / f"{label}_lr{lr:g}_seed{seed}.json"


def model_path(start: str, label: str, lr: float, seed: int) -> Path:
    return WORK / "models" / start / f"{label}_lr{lr:g}_seed{seed}"


def run_one(start: str, name: str, lr: float, seed: int, variant: str = "", extra: tuple[str, ...] = ()) -> dict:
    """Train one contender (or one sweep variant of ours), select its checkpoint on dev, keep that model; the
    record goes to ``quality_runs``."""
    contender = CONTENDERS[name]
    label = f"{name}+{variant}" if variant else name
    path = record_path(start, label, lr, seed, sweep=bool(variant))
    if path.is_file():
        return json.loads(path.read_text())
    steps, texts = job_shape(start, contender)
    output_dir = WORK / "runs" / start / f"{label}_lr{lr:g}_seed{seed}"
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)
    print(f"== start {start}, {label}, lr {lr:g}, seed {seed}, {steps} steps x {texts:.0f} texts", flush=True)
    started = time.perf_counter()
    if contender.trainer == "ours":
        dev, selected = run_ours(start, contender, lr, seed, steps, output_dir, extra)
    else:
        dev, selected = run_peer(start, contender, lr, seed, steps, output_dir)
    seconds = time.perf_counter() - started
    best = max(dev, key=dev.get)
    kept = model_path(start, label, lr, seed)
    shutil.rmtree(kept, ignore_errors=True)
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(selected, kept, ignore=shutil.ignore_patterns("checkpoint-*", "optimizer.pt", "*.pth"))
    shutil.rmtree(output_dir, ignore_errors=True)
    record = RunRecord(start, label, lr, seed, variant, [*contender.recipe_args, *extra], steps, round(texts, 1),
                       {str(step): value for step, value in sorted(dev.items())}, best, dev[best],
                       round(seconds, 1), describe_machine())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(record), indent=2) + "\n")
    print(f"   dev {dev[best]:.2f} at step {best} ({seconds:.0f} s)", flush=True)
    return asdict(record)


def tuned(start: str) -> dict:
    path = RUNS / start / "tuned.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def tune(start: str, names: list[str], seed: int) -> None:
    """Each contender at every rate of the start's grid (one seed); its best dev score picks its rate."""
    choice = tuned(start)
    for name in names:
        records = [run_one(start, name, lr, seed) for lr in STARTS[start].learning_rates]
        best = max(records, key=lambda record: record["selected_dev"])
        choice[name] = {"learning_rate": best["learning_rate"], "seed": seed, "chosen_on": "STS-B dev",
                        "candidates": {f"{r['learning_rate']:g}": round(r["selected_dev"], 4) for r in records}}
        (RUNS / start / "tuned.json").write_text(json.dumps(choice, indent=2) + "\n")
        print(f"start {start}, {name}: learning rate {best['learning_rate']:g} (dev {best['selected_dev']:.2f})")


def chosen_rate(start: str, name: str) -> float:
    choice = tuned(start).get(name)
    if choice is None:
        raise SystemExit(f"start {start}: {name} has no learning rate yet; run: python -m bench.quality_vs_peers tune "
                         f"--start {start} --contenders {name}")
    return choice["learning_rate"]


def sweep(start: str, names: list[str], base: str | None, lr: float | None, seed: int) -> None:
    """Ours' candidate objectives at one rate (default: the middle of the start's grid), dev only."""
    rate = lr or STARTS[start].learning_rates[len(STARTS[start].learning_rates) // 2]
    for name in names:
        if base:
            arguments = (*SWEEP[base], *SWEEP_OPTIONS[name])
            variant = f"{base}+{name}"
        else:
            arguments, variant = SWEEP[name], name
        run_one(start, "ours-111", rate, seed, variant, arguments)


def score_chosen(start: str) -> None:
    """The test suite for every run at its contender's chosen rate (all seeds), and for the start model."""
    from ese_trainer.data import STS_TASKS, load_sts_task

    suite = {task: load_sts_task(task) for task in STS_TASKS}
    start_file = RUNS / start / "start_model.json"
    if not start_file.is_file():
        scores = score(Path(start_model(start)), start, {**suite, **dev_task()})
        scores["avg"] = sum(scores[task] for task in suite) / len(suite)
        start_file.write_text(json.dumps(scores, indent=2) + "\n")
    for name, choice in tuned(start).items():
        lr = choice["learning_rate"]
        for path in sorted((RUNS / start).glob(f"{name}_lr{lr:g}_seed*.json")):
            record = json.loads(path.read_text())
            if record["test"]:
                continue
            folder = model_path(start, name, lr, record["seed"])
            record["test"] = score(folder, start, suite)
            path.write_text(json.dumps(record, indent=2) + "\n")
            print(f"start {start}, {name} seed {record['seed']}: 7-task avg {record['test']['avg']:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    sweep_parser = commands.add_parser("sweep", help="ours' candidate objectives, dev only")
    sweep_parser.add_argument("--start", choices=STARTS, required=True)
    sweep_parser.add_argument("--names", nargs="+", help="SWEEP (or with --base, SWEEP_OPTIONS) names; default all")
    sweep_parser.add_argument("--base", choices=SWEEP)
    sweep_parser.add_argument("--lr", type=float)
    sweep_parser.add_argument("--seed", type=int, default=42)
    tune_parser = commands.add_parser("tune", help="every contender x the start's learning-rate grid, dev only")
    tune_parser.add_argument("--start", choices=STARTS, required=True)
    tune_parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, required=True)
    tune_parser.add_argument("--seed", type=int, default=42)
    seeds_parser = commands.add_parser("seeds", help="more seeds at each contender's chosen rate")
    seeds_parser.add_argument("--start", choices=STARTS, required=True)
    seeds_parser.add_argument("--seeds", type=int, nargs="+", required=True)
    seeds_parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, required=True)
    score_parser = commands.add_parser("score", help="the test suite, for the chosen runs")
    score_parser.add_argument("--start", choices=STARTS, required=True)
    commands.add_parser("report")
    args = parser.parse_args()
    if args.command == "sweep":
        names = args.names or list(SWEEP_OPTIONS if args.base else SWEEP)
        sweep(args.start, names, args.base, args.lr, args.seed)
    elif args.command == "tune":
        tune(args.start, args.contenders, args.seed)
    elif args.command == "seeds":
        for seed in args.seeds:
            for name in args.contenders:
                run_one(args.start, name, chosen_rate(args.start, name), seed)
    elif args.command == "score":
        score_chosen(args.start)
    else:
        from bench.quality_report import write_report

        write_report()


if __name__ == "__main__":
    main()
