"""Quality against the recipes people would otherwise use: the same job for every contender, choices on dev only.

    python -m bench.quality_vs_peers protocol --start b --contenders st-mnrl ours st-gist st-combined angle
    python -m bench.quality_vs_peers tune --start b --contenders st-mnrl    # learning rates only (dev)
    python -m bench.quality_vs_peers seeds --start b --seeds 45 46 --contenders ours st-mnrl
    python -m bench.quality_vs_peers seeds --start b --seeds 42 --contenders raw-labels --rate_of ours
    python -m bench.quality_vs_peers seeds --start b --seeds 42 43 44 --contenders ours-fd ours-ad0 --rate_of ours
    python -m bench.quality_vs_peers sweep --start b [--base w1-10-1] [--names ...]   # ours' objectives (dev only)
    python -m bench.quality_vs_peers sweep --start b --contender ours-starbucks --names sb-sim1 sb-grid  # ESE's
    python -m bench.quality_vs_peers score --start b                       # the test suite, chosen runs only
    python -m bench.quality_vs_peers report

The job (per start, ``bench/jobs.py``): the same start model, the same sources with one pass over each
(``EPOCHS``), batches of 32 of each contender's unit (ours: a row, a premise with its hypotheses; sentence-
transformers: a triplet of its own NLI convention, or an STS pair; AnglE: a pair), linear schedule with 10% warmup,
AdamW, weight decay 0.01, the same seeds. STS-B dev is scored by our evaluator inside every contender's trainer at
8 evenly spaced steps (``bench/peers/dev_callback.py``); a run's model is its best-dev weights.

The protocol (``protocol``, resuming from the records): each contender's learning rate by successive halving on
dev (seed 42): every candidate runs its full-length schedule, and at half the pass a candidate outside the top two
stops; of the top two, the higher chosen dev wins; the grid is extended (x2, /2) until the chosen rate has a lower
dev score on both sides, the same rule for all. Then seeds 43-44 for every contender; ours is the candidate of our
recipe run at the start (``bench.jobs.ours_candidates``: its defaults, the seed's 1:1:1 weights, both-anchor rows,
at (c) the STS sources' own weightings) with the best mean dev over seeds 42-44; seeds
45-46 for it, the best peer by dev and any peer within 0.5 of it on dev (5 paired seeds); the raw-labels row (one
seed, the defaults' rate); then the test suite for the chosen runs, the only time test sets are read.

Starts: ``a`` all-MiniLM-L6-v2 as released; ``b`` the same cut to its first 3 layers (``recipes/export_slice.py``):
a weaker encoder with room to learn; ``c`` start ``a`` with STS-B train and SICK train as in-domain scored
sources. Training data: the embedded SNLI dev + test pairs (19.7k pairs; 7.2k premise rows).

Contenders (``bench.jobs.CONTENDERS``): ours (the recipe's defaults), ours with the seed's 1:1:1 weights, ours on
both-anchor NLI rows (``--nli_anchors both``, or ``both_in_batch``: the added rows in the in-batch term only),
sentence-transformers' trainer with MNRL or GISTEmbedLoss on its NLI triplets (both anchors, the no-duplicates
sampler) or with our three losses at our weights on the same triplets, AnglE's own trainer (angle-emb 0.6.1 in its
own virtualenv, ``bench/peers/setup_angle_venv.sh``, its NLI weights), and ours with raw class ids (the original
bug). ESE (chosen by its slices' dev mean) against its slices trained alone, and MoE against dense, run as plans of
their own on this protocol: ``bench/ese_vs_twins.py``. At (c) the STS sources are trained with CoSENT
(sentence-transformers: a dataset of their own, proportional sampler; AnglE: pairs in its one file).

Every run writes ``bench/results/quality_runs/<start>/<contender>_lr<lr>_seed<seed>.json`` (sweep runs under
``sweep/``) and is skipped when that file exists; the model of a run that ran its whole pass is kept under
``outputs/quality/models`` until ``score`` reads it. ``report`` writes ``bench/results/quality_vs_peers.{json,md,png}``
and ``bench/results/objective_sweep.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import yaml

from bench.jobs import (
    ANGLE_PYTHON,
    BATCH,
    CHECKPOINTS,
    CLOSE,
    CONTENDERS,
    DEV_METRIC,
    EPOCHS,
    MORE_SEEDS,
    REPO,
    RUNS,
    SEEDS,
    STARTS,
    SWEEP,
    SWEEP_OPTIONS,
    TINY,
    TINY_PAIRS,
    WORK,
    Contender,
    RunRecord,
    exclusive,
    half_dev,
    halving_choice,
    offline,
    ours_candidates,
    ours_on_dev,
    quality_peers,
    second_best_half,
    start_model,
    write_atomically,
)
from bench.machine import describe_machine
from ese_trainer.data.rows import NEGATIVE, POSITIVE, SCORED

STSB_DEV = "data/STS/STSBenchmark/sts-dev.csv"
ROLE_LABELS = {POSITIVE: "entailment", NEGATIVE: "contradiction", SCORED: "neutral"}  # under the default label map


def st_nli_triplets(labelled_pairs: list[tuple[str, str, str]], seed: int = 0) -> list[dict]:
    """sentence-transformers' NLI triplets, built as its NLI example (``training_nli_v2.py``) and the all-nli
    ``triplet`` subset build them: every sentence is keyed with the other side of each of its pairs, both ways; a
    sentence with an entailment and a contradiction gives (it, an entailment, a contradiction) and (an entailment,
    it, a contradiction), picked at random."""
    partners: dict[str, dict[str, list[str]]] = {}
    for first, second, label in labelled_pairs:
        if label in ("entailment", "contradiction"):
            for key, other in ((first, second), (second, first)):
                texts = partners.setdefault(key, {"entailment": [], "contradiction": []})[label]
                if other not in texts:
                    texts.append(other)
    rng, triplets = random.Random(seed), []
    for sentence, found in partners.items():
        if found["entailment"] and found["contradiction"]:
            triplets.append({"anchor": sentence, "positive": rng.choice(found["entailment"]),
                             "negative": rng.choice(found["contradiction"])})
            triplets.append({"anchor": rng.choice(found["entailment"]), "positive": sentence,
                             "negative": rng.choice(found["contradiction"])})
    return triplets


def write_jsonl(path: Path, rows: list[dict]) -> int:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return len(rows)


def count_row(sizes: dict, suffix: str, source: str, row: dict) -> None:
    """One row of ``source`` counted in ``sizes["rows" + suffix]`` and its texts in ``sizes["row_texts" + suffix]``."""
    sizes["rows" + suffix][source] = sizes["rows" + suffix].get(source, 0) + 1
    sizes["row_texts" + suffix][source] = sizes["row_texts" + suffix].get(source, 0) + 1 + len(row["texts"])


def training_files(start: str) -> dict:
    """The start's training data for every trainer, from our loader with the default label map (one row per
    premise): ``triplets.jsonl`` (sentence-transformers' NLI triplets), ``sts_pairs.jsonl`` (the scored sources'
    pairs, for CoSENT), ``angle.jsonl`` (AnglE's format A: NLI without neutral, entailment 1, contradiction 0, and
    the scored pairs); and their sizes, for the step counts and texts per step (``rows_both``, ``row_texts_both``:
    ours' rows with ``nli_anchors: both``)."""
    from ese_trainer.data.sources import TrainSource, load_train_sources

    folder = WORK / "data" / start
    meta_file = folder / "meta.json"
    if meta_file.is_file() and "rows_both" in (sizes := json.loads(meta_file.read_text())):
        return sizes
    with exclusive(f"{start}-data"):  # written once, by one harness
        if meta_file.is_file() and "rows_both" in (sizes := json.loads(meta_file.read_text())):
            return sizes
        folder.mkdir(parents=True, exist_ok=True)
        specs = [TrainSource.parse(entry, index) for index, entry in enumerate(STARTS[start].sources)]
        rows, _ = load_train_sources(specs, seed=0)
        names = [spec.display_name if spec.kind == "sts" else "nli" for spec in specs]
        sizes = {"rows": {}, "row_texts": {}, "triplets": {}, "rows_both": {}, "row_texts_both": {}}
        both, _ = load_train_sources([replace(spec, anchors="both") if spec.kind == "nli" else spec
                                      for spec in specs], seed=0)
        for row in both:  # ours with nli_anchors both
            count_row(sizes, "_both", names[row["source"]], row)
        nli_pairs, sts_pairs, angle_pairs = [], [], []
        for row in rows:
            source = names[row["source"]]
            count_row(sizes, "", source, row)
            for text, score, role in zip(row["texts"], row["scores"], row["roles"]):
                if source == "nli":
                    nli_pairs.append((row["anchor"], text, ROLE_LABELS[role]))
                    if role != SCORED:
                        angle_pairs.append({"text1": row["anchor"], "text2": text, "label": score})
                else:
                    sts_pairs.append({"sentence1": row["anchor"], "sentence2": text, "score": score, "source": source})
                    angle_pairs.append({"text1": row["anchor"], "text2": text, "label": score})
        sizes["triplets"]["nli"] = write_jsonl(folder / "triplets.jsonl", st_nli_triplets(nli_pairs))
        for pair in sts_pairs:
            sizes["triplets"][pair["source"]] = sizes["triplets"].get(pair["source"], 0) + 1
        write_jsonl(folder / "sts_pairs.jsonl", sts_pairs)
        sizes["angle"] = write_jsonl(folder / "angle.jsonl", angle_pairs)
        write_atomically(meta_file, json.dumps(sizes, indent=2) + "\n")
    return sizes


def dev_file() -> str:
    """STS-B dev, what every run is chosen on (its first ``TINY_PAIRS`` pairs in a tiny check)."""
    if not TINY:
        return STSB_DEV
    path = WORK / "sts-dev-tiny.csv"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join((REPO / STSB_DEV).read_text().splitlines()[:TINY_PAIRS]) + "\n")
    return str(path)


def suite_tasks() -> dict:
    """The 7-task STS test suite, read only to score chosen runs (each task's first ``TINY_PAIRS`` in a tiny check)."""
    from ese_trainer.data import STS_TASKS, load_sts_task

    suite = {task: load_sts_task(task) for task in STS_TASKS}
    if TINY:
        suite = {task: type(pairs)(pairs.name, pairs.sentences1[:TINY_PAIRS], pairs.sentences2[:TINY_PAIRS],
                                   pairs.scores[:TINY_PAIRS]) for task, pairs in suite.items()}
    return suite


def equal_time_path(start: str) -> Path:
    """Where the equal-time contenders' step-time ratios are frozen (``python -m bench.ese_vs_twins time``)."""
    return RUNS / start / "equal_time.json"


def passes(start: str, contender: Contender) -> float:
    """Passes over every source: ``EPOCHS``; for a contender given others' wall clock (``time_of``), ``EPOCHS``
    times their summed seconds per step over ``time_against``'s (every contender's pass has the same steps), timed on
    a quiet machine and frozen in ``equal_time.json`` (``python -m bench.ese_vs_twins time``: every rate and seed of
    it then runs the same job)."""
    if not contender.time_of:
        return float(EPOCHS)
    path = equal_time_path(start)
    frozen = json.loads(path.read_text()) if path.is_file() else {}
    if contender.name not in frozen:
        raise SystemExit(f"start {start}: {contender.name} needs the step time of {' + '.join(contender.time_of)} "
                         f"over {contender.time_against}, timed on a quiet machine: run `python -m bench.ese_vs_twins "
                         f"time --start {start}` first")
    return EPOCHS * frozen[contender.name]["ratio"]


def both_anchors(contender: Contender) -> bool:
    """Whether the contender's recipe arguments anchor NLI rows on their positives too (``--nli_anchors both`` or
    ``both_in_batch``: the same rows)."""
    arguments = list(contender.recipe_args)
    return "--nli_anchors" in arguments and arguments[arguments.index("--nli_anchors") + 1] != "premise"


def job_shape(start: str, contender: Contender) -> tuple[int, float]:
    """Optimizer steps of the contender's passes over every source (:func:`passes`) in batches of ``BATCH`` units
    (the plan, rounded up as the Trainer does; a record keeps the steps that ran), and texts per step."""
    sizes, epochs = training_files(start), passes(start, contender)
    if contender.trainer == "angle":
        return math.ceil(epochs * (sizes["angle"] // BATCH)), 2.0 * BATCH
    if contender.trainer == "ours":
        suffix = "_both" if both_anchors(contender) else ""
        units = sizes["rows" + suffix]
        texts = sum(sizes["row_texts" + suffix].values()) / sum(units.values())
    else:
        units = sizes["triplets"]
        texts = (3 * units["nli"] + 2 * sum(v for k, v in units.items() if k != "nli")) / sum(units.values())
    return math.ceil(epochs * sum(count // BATCH for count in units.values())), texts * BATCH


def recipe_config(start: str, contender: Contender, lr: float, seed: int, every: int, output_dir: Path) -> dict:
    """Our recipe's config for the job (the recipe's defaults for everything else, the loss included): the
    contender's start (a slice of it for a twin), passes, the dev metric it is chosen by and its STS sources' own
    term weights."""
    sources = [{**source, "loss_weights": dict(contender.sts_loss_weights)}
               if contender.sts_loss_weights and source["kind"] == "sts" else dict(source)
               for source in STARTS[start].sources]
    return {"model_name_or_path": start_model(start, contender.start_slice), "pooling": "mean",
            "max_seq_length": 128, "train_datasets": sources,
            "sts_dev": dev_file(), "sts_tasks": "none", "suite_before_training": False, "output_dir": str(output_dir),
            "seed": seed, "per_device_train_batch_size": BATCH, "per_device_eval_batch_size": 64,
            "learning_rate": lr, "warmup_steps": 0.1, "weight_decay": 0.01,
            "num_train_epochs": passes(start, contender), "logging_steps": 10, "eval_on_start": False,
            "eval_strategy": "steps", "eval_steps": every, "save_strategy": "steps", "save_steps": every,
            "save_total_limit": 2, "load_best_model_at_end": True, "metric_for_best_model": contender.dev_metric,
            "greater_is_better": True, "report_to": "none", "dataloader_pin_memory": False, "disable_tqdm": True}


@dataclass
class Trained:
    """What a contender's run gave: dev by step, the folder of its best weights, the steps its schedule planned and
    ran, and the step of a halving cut (None: ran the whole pass)."""

    dev: dict[int, float]
    selected: Path
    steps: int
    steps_run: int
    stopped_at: int | None
    full_dev: dict[int, float] | None = None  # the full model's dev, when the run is chosen by another metric


def halving_args(every: int, keep_at_least: float | None) -> list[str]:
    """The cut's arguments, the same for every contender's script: at half the pass, below ``keep_at_least``."""
    args = ["--half_step", str(every * (CHECKPOINTS // 2))]
    return args + (["--keep_at_least", repr(keep_at_least)] if keep_at_least is not None else [])


def run_ours(start: str, contender: Contender, lr: float, seed: int, every: int, output_dir: Path,
             extra: tuple[str, ...], keep_at_least: float | None) -> Trained:
    config = output_dir / "job.yaml"
    config.write_text(yaml.safe_dump(recipe_config(start, contender, lr, seed, every, output_dir)))
    cut = output_dir / "halving.json"
    subprocess.run([sys.executable, "-m", "bench.peers.recipe_train", *halving_args(every, keep_at_least),
                    "--record", str(cut), "--dev_metric", contender.dev_metric, "--", "--config", str(config),
                    *contender.recipe_args, *extra], cwd=REPO, check=True)
    state = json.loads((output_dir / "trainer_state.json").read_text())

    def logged(metric: str) -> dict[int, float]:
        return {entry["step"]: entry[f"eval_{metric}"] for entry in state["log_history"] if f"eval_{metric}" in entry}

    stopped = json.loads(cut.read_text())["stopped_at"] if cut.is_file() else None
    full = logged(DEV_METRIC) if contender.dev_metric != DEV_METRIC else None
    return Trained(logged(contender.dev_metric), output_dir, state["max_steps"], state["global_step"], stopped, full)


def run_peer(start: str, contender: Contender, lr: float, seed: int, every: int, output_dir: Path,
             keep_at_least: float | None) -> Trained:
    folder = WORK / "data" / start
    sts = [source["name"] for source in STARTS[start].sources if source["kind"] == "sts"]
    common = ["--learning_rate", str(lr), "--batch_size", str(BATCH), "--seed", str(seed), "--weight_decay", "0.01",
              "--epochs", str(EPOCHS), "--output_dir", str(output_dir), "--dev_file", dev_file(),
              "--eval_every", str(every), *halving_args(every, keep_at_least)]
    if contender.trainer == "st":
        command = [sys.executable, "-m", "bench.peers.st_train", "--model", start_model(start), "--mode",
                   contender.st_mode, "--triplets_jsonl", str(folder / "triplets.jsonl"), "--pairs_jsonl",
                   str(folder / "sts_pairs.jsonl"), "--sts_sources", *sts, "--warmup_ratio", "0.1", *common]
    else:
        if not ANGLE_PYTHON.is_file():
            subprocess.run(["bash", "bench/peers/setup_angle_venv.sh", ".venv-angle"], cwd=REPO, check=True)
        command = [str(ANGLE_PYTHON), "-m", "bench.peers.angle_train", "--model", start_model(start),
                   "--train_jsonl", str(folder / "angle.jsonl"), "--pooling_strategy", "avg", "--cosine_w", "0",
                   "--ibn_w", "30", "--angle_w", "1", "--warmup_steps", "0.1", "--logging_steps", "50",
                   "--threads", str(len(os.sched_getaffinity(0))), *common]
    subprocess.run(command, cwd=REPO, check=True)
    record = json.loads((output_dir / "dev_record.json").read_text())
    return Trained({int(step): dev for step, dev in record["dev_by_step"].items()}, output_dir / "best",
                   record["max_steps"], record["steps"], record["stopped_at"])


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

    return {"dev": load_sts_pairs(dev_file(), name="dev")}


def record_path(start: str, label: str, lr: float, seed: int, sweep: bool = False) -> Path:
    return RUNS / start / ("sweep" if sweep else "") / f"{label}_lr{lr:g}_seed{seed}.json"


def model_path(start: str, label: str, lr: float, seed: int) -> Path:
    return WORK / "models" / start / f"{label}_lr{lr:g}_seed{seed}"


def run_lock(path: Path):
    """The lock of the run recorded at ``path``: held to train it, to train it again or to score it."""
    return exclusive(f"{path.parent.name}-{path.stem}")


def run_one(start: str, name: str, lr: float, seed: int, variant: str = "", extra: tuple[str, ...] = (),
            keep_at_least: float | None = None) -> dict:
    """Train one contender (or one sweep variant of ours) with STS-B dev scored inside its trainer, stopping at half
    the pass below ``keep_at_least``; keep the best model of a run that ran the whole pass; the record goes to
    ``quality_runs``."""
    label = f"{name}+{variant}" if variant else name
    path = record_path(start, label, lr, seed, sweep=bool(variant))
    with run_lock(path):  # another harness may be running (or have run) the same job
        if path.is_file():
            return json.loads(path.read_text())
        return train_and_record(start, name, label, path, lr, seed, variant, extra, keep_at_least)


def train_and_record(start: str, name: str, label: str, path: Path, lr: float, seed: int, variant: str,
                     extra: tuple[str, ...], keep_at_least: float | None) -> dict:
    """:func:`run_one`'s job, run by the one process that holds it."""
    contender = CONTENDERS[name]
    steps, texts = job_shape(start, contender)
    every = max(1, steps // CHECKPOINTS)
    output_dir = WORK / "runs" / start / f"{label}_lr{lr:g}_seed{seed}"
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)
    cut = "" if keep_at_least is None else f", stops at half below dev {keep_at_least:.2f}"
    print(f"== start {start}, {label}, lr {lr:g}, seed {seed}, ~{steps} steps x {texts:.0f} texts{cut}", flush=True)
    started = time.perf_counter()
    if contender.trainer == "ours":
        trained = run_ours(start, contender, lr, seed, every, output_dir, extra, keep_at_least)
    else:
        trained = run_peer(start, contender, lr, seed, every, output_dir, keep_at_least)
    seconds = time.perf_counter() - started
    best = max(trained.dev, key=trained.dev.get)
    if trained.stopped_at is None:
        kept = model_path(start, label, lr, seed)
        shutil.rmtree(kept, ignore_errors=True)
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(trained.selected, kept, ignore=shutil.ignore_patterns("checkpoint-*", "optimizer.pt", "*.pth"))
    shutil.rmtree(output_dir, ignore_errors=True)
    record = RunRecord(start, label, lr, seed, variant, [*contender.recipe_args, *extra], trained.steps,
                       round(texts, 1), {str(step): value for step, value in sorted(trained.dev.items())}, best,
                       trained.dev[best], round(seconds, 1), describe_machine(), steps_run=trained.steps_run,
                       stopped_at=trained.stopped_at, keep_at_least=keep_at_least, dev_metric=contender.dev_metric,
                       full_dev_by_step=None if trained.full_dev is None else {
                           str(step): value for step, value in sorted(trained.full_dev.items())},
                       passes=passes(start, contender))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(asdict(record), indent=2) + "\n")
    stop = f", stopped at step {trained.stopped_at}" if trained.stopped_at else ""
    print(f"   dev {trained.dev[best]:.2f} at step {best}{stop} ({seconds:.0f} s)", flush=True)
    return asdict(record)


def tuned(start: str) -> dict:
    path = RUNS / start / "tuned.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def save_tuning(start: str, name: str, choice: dict) -> None:
    with exclusive(f"{start}-tuned"):  # read, update and write as one step against other harnesses
        everything = tuned(start)
        everything[name] = choice
        write_atomically(RUNS / start / "tuned.json", json.dumps(everything, indent=2) + "\n")


def extended_grid(grid: list[float], chosen: float) -> list[float]:
    """The grid with one more rate beyond the chosen edge: half the lowest, or twice the highest."""
    return [chosen / 2, *grid] if chosen == grid[0] else [*grid, chosen * 2]


def tune(start: str, name: str, seed: int, max_extensions: int = 4) -> float:
    """One contender's learning rate on STS-B dev: the start's grid with successive halving, extended (x2 above, /2
    below) until the chosen rate has a lower dev score on both sides. The same rule for every contender."""
    grid = sorted(STARTS[start].learning_rates)
    records: dict[float, dict] = {}
    for _ in range(2 * max_extensions + 1):
        middle = grid[len(grid) // 2]
        for lr in sorted((lr for lr in grid if lr not in records), key=lambda lr: abs(math.log(lr / middle))):
            records[lr] = run_one(start, name, lr, seed, keep_at_least=second_best_half(records))
        chosen = halving_choice(records)
        if chosen not in (grid[0], grid[-1]) or TINY:  # a tiny check runs the start's grid alone
            break
        grid = extended_grid(grid, chosen)
    else:
        raise SystemExit(f"start {start}, {name}: the chosen rate is still at the edge of {grid} after "
                         f"{max_extensions} extensions a side")
    save_tuning(start, name, {
        "learning_rate": chosen, "seed": seed, "chosen_on": "STS-B dev, successive halving (top two at half the pass)",
        "candidates": {f"{lr:g}": {"dev": round(records[lr]["selected_dev"], 4),
                                   "half_dev": round(half_dev(records[lr]), 4),
                                   "stopped_at": records[lr].get("stopped_at")} for lr in grid}})
    print(f"start {start}, {name}: learning rate {chosen:g} (dev {records[chosen]['selected_dev']:.2f}; grid "
          f"{', '.join(f'{lr:g}' for lr in grid)})", flush=True)
    return chosen


def chosen_rate(start: str, name: str) -> float:
    choice = tuned(start).get(name)
    if choice is None:
        raise SystemExit(f"start {start}: {name} has no learning rate yet; run: python -m bench.quality_vs_peers tune "
                         f"--start {start} --contenders {name}")
    return choice["learning_rate"]


def adopt_rate(start: str, name: str, of: str) -> float:
    """``name`` runs at ``of``'s chosen rate (the raw-labels row measures the bug at the recipe's own setting)."""
    rate = chosen_rate(start, of)
    save_tuning(start, name, {"learning_rate": rate, "chosen_on": f"{of}'s rate", "candidates": {}})
    return rate


def sweep(start: str, names: list[str], base: str | None, lr: float | None, seed: int,
          contender: str = "ours-111") -> None:
    """Candidate objectives of ``contender``, dev only (by its own dev metric). ``ours-111``: the weightings of
    ``SWEEP`` (with ``base``: one of them plus ``SWEEP_OPTIONS``) at ``lr`` (default: the middle of the start's
    grid); another contender (ESE's): ``SWEEP_OPTIONS`` on top of its own arguments at its chosen rate, beside its
    tuning run at that rate and seed."""
    if contender == "ours-111":
        rate = lr or STARTS[start].learning_rates[len(STARTS[start].learning_rates) // 2]
    else:
        rate = lr or chosen_rate(start, contender)
    for name in names:
        if base:
            arguments = (*SWEEP[base], *SWEEP_OPTIONS[name])
            variant = f"{base}+{name}"
        else:
            arguments, variant = SWEEP[name] if contender == "ours-111" else SWEEP_OPTIONS[name], name
        run_one(start, contender, rate, seed, variant, arguments)


REBUILT_DEV_GAP = 0.5  # the most a rebuilt run's dev curve may differ from its record's (another CPU's rounding)


def kept_model(path: Path) -> Path:
    """The model of the whole-pass run recorded at ``path``. Models are not committed, so on a machine that lacks it
    the run is trained again from its record (same contender, rate and seed, whole pass) and must reproduce the
    record's dev curve to within ``REBUILT_DEV_GAP`` (another CPU rounds differently; more means the code changed);
    the record keeps the rebuilt run's machine, curve and selected step as ``rebuilt``. The caller holds the
    run's lock (``run_lock``)."""
    record = json.loads(path.read_text())
    start, label, lr, seed = record["start"], record["contender"], record["learning_rate"], record["seed"]
    folder = model_path(start, label, lr, seed)
    if folder.is_dir():
        return folder
    name, _, variant = label.partition("+")
    extra = tuple(record["arguments"][len(CONTENDERS[name].recipe_args):]) if variant else ()
    print(f"   {path.name}: its model is not on this machine; training it again", flush=True)
    rebuilt = train_and_record(start, name, label, WORK / "rebuilt" / path.name, lr, seed, variant, extra, None)
    gap = max(abs(rebuilt["dev_by_step"].get(step, math.inf) - dev) for step, dev in record["dev_by_step"].items())
    if gap > REBUILT_DEV_GAP:
        shutil.rmtree(folder)
        raise SystemExit(f"{path}: trained again, its dev curve differs from the record's by up to {gap:.2f} "
                         f"(> {REBUILT_DEV_GAP}): the code or data changed since; rerun the contender (delete its "
                         "records) rather than score a different model under this record")
    record["rebuilt"] = {key: rebuilt[key] for key in ("machine", "dev_by_step", "selected_step", "selected_dev",
                                                        "train_seconds")} | {"max_dev_gap": round(gap, 4)}
    write_atomically(path, json.dumps(record, indent=2) + "\n")
    return folder


def score_chosen_runs(start: str, names: list[str] | tuple[str, ...], done: str,
                      fields: Callable[[dict, Path, dict], dict]) -> None:
    """Every whole-pass run at the chosen rate of a tuned contender of ``names`` whose record has no ``done`` yet:
    under the run's lock, its model (:func:`kept_model`) and ``fields(record, model folder, suite)`` written into
    its record. The test suite is loaded once, when a run first needs it; a contender not yet tuned is passed over."""
    rates, suite = tuned(start), None
    for name in (name for name in names if name in rates):
        lr = rates[name]["learning_rate"]
        for path in sorted((RUNS / start).glob(f"{name}_lr{lr:g}_seed*.json")):
            with run_lock(path):
                record = json.loads(path.read_text())
                if record.get(done) or record.get("stopped_at"):
                    continue
                suite = suite or suite_tasks()
                folder = kept_model(path)
                record = json.loads(path.read_text())
                record.update(fields(record, folder, suite))
                write_atomically(path, json.dumps(record, indent=2) + "\n")
            print(f"start {start}, {name} seed {record['seed']}: 7-task avg {record['test']['avg']:.2f}", flush=True)


def score_chosen(start: str, names: list[str] | None = None) -> None:
    """The test suite for every whole-pass run at its contender's chosen rate (all seeds), and for the start model.
    ``protocol`` calls it after every run, so a model is scored on the machine that trained it; test scores enter
    no choice (rates, checkpoints and seeds are chosen on dev), only the final table. ``names``: those contenders
    only (default: every tuned one but the speed options, which dev alone judges)."""
    start_file = RUNS / start / "start_model.json"
    if not start_file.is_file():
        suite = suite_tasks()
        scores = score(Path(start_model(start)), start, {**suite, **dev_task()})
        scores["avg"] = sum(scores[task] for task in suite) / len(suite)
        start_file.write_text(json.dumps(scores, indent=2) + "\n")
    if names is None:  # a speed option is compared with ours on dev only
        names = [name for name in tuned(start) if CONTENDERS[name].plan != "speed"]
    score_chosen_runs(start, names, "test",
                      lambda record, folder, suite: {"test": score(folder, start, suite)})


def dev_by_seed(start: str, name: str) -> dict[int, float]:
    """The contender's chosen-dev score by seed, over the records at its chosen rate."""
    records = (json.loads(path.read_text()) for path in (RUNS / start).glob(
        f"{name}_lr{chosen_rate(start, name):g}_seed*.json"))
    return {record["seed"]: record["selected_dev"] for record in records if not record.get("stopped_at")}


def dev_mean(start: str, name: str, seeds: tuple[int, ...]) -> float:
    """The contender's mean chosen-dev score over ``seeds`` at its chosen rate."""
    runs = dev_by_seed(start, name)
    return statistics.mean(runs[seed] for seed in seeds)


def protocol(start: str, names: list[str]) -> None:
    """The whole comparison at one start, resuming from the records: every contender's rate (``tune``), seeds
    ``SEEDS`` for all; ours is the candidate of ours among ``names`` that dev prefers (``ours_on_dev``; the report
    chooses among every candidate with records at the start); ``MORE_SEEDS`` for it, the best peer by dev and any
    peer within ``CLOSE`` of it on dev; the raw-labels row (one seed, the defaults' rate). The test suite scores
    each chosen run as soon as it is made (:func:`score_chosen`), on the machine that holds its model."""
    for name in names:
        tune(start, name, SEEDS[0])
        score_chosen(start, names)
    for seed in SEEDS[1:]:
        for name in names:
            run_one(start, name, chosen_rate(start, name), seed)
            score_chosen(start, names)
    peers = quality_peers(names)
    chosen = ours_on_dev({name: dev_by_seed(start, name) for name in names if name in ours_candidates()})
    if chosen and peers:  # with no peer, or no candidate of ours, there is nothing to pair the extra seeds with
        ours = dev_mean(start, chosen, SEEDS)
        peer_means = {name: dev_mean(start, name, SEEDS) for name in peers}
        best = max(peer_means, key=peer_means.get)
        close = [name for name in peers if name == best or peer_means[name] > ours - CLOSE]
        for seed in MORE_SEEDS:
            for name in [chosen, *close]:
                run_one(start, name, chosen_rate(start, name), seed)
                score_chosen(start, names)
    if "ours" in names:
        run_one(start, "raw-labels", adopt_rate(start, "raw-labels", "ours"), SEEDS[0])
    score_chosen(start, [*names, "raw-labels"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    protocol_parser = commands.add_parser("protocol", help="the whole comparison at a start (resumes)")
    protocol_parser.add_argument("--start", choices=STARTS, required=True)
    protocol_parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, required=True)
    sweep_parser = commands.add_parser("sweep", help="ours' candidate objectives, dev only")
    sweep_parser.add_argument("--start", choices=STARTS, required=True)
    sweep_parser.add_argument("--names", nargs="+", help="SWEEP (or with --base, SWEEP_OPTIONS) names; default all")
    sweep_parser.add_argument("--base", choices=SWEEP)
    sweep_parser.add_argument("--lr", type=float)
    sweep_parser.add_argument("--seed", type=int, default=42)
    sweep_parser.add_argument("--contender", choices=CONTENDERS, default="ours-111",
                              help="ours-111: SWEEP's weightings; another (ours-starbucks): SWEEP_OPTIONS on top")
    tune_parser = commands.add_parser("tune", help="contenders' learning rates on dev (successive halving)")
    tune_parser.add_argument("--start", choices=STARTS, required=True)
    tune_parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, required=True)
    tune_parser.add_argument("--seed", type=int, default=SEEDS[0])
    seeds_parser = commands.add_parser("seeds", help="more seeds at each contender's chosen rate")
    seeds_parser.add_argument("--start", choices=STARTS, required=True)
    seeds_parser.add_argument("--seeds", type=int, nargs="+", required=True)
    seeds_parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, required=True)
    seeds_parser.add_argument("--rate_of", choices=CONTENDERS, help="run at this contender's chosen rate")
    score_parser = commands.add_parser("score", help="the test suite, for the chosen runs")
    score_parser.add_argument("--start", choices=STARTS, required=True)
    commands.add_parser("report")
    args = parser.parse_args()
    offline()
    if args.command == "protocol":
        protocol(args.start, args.contenders)
    elif args.command == "sweep":
        if args.contender != "ours-111" and (args.base or not args.names):
            parser.error("sweep --contender other than ours-111 takes --names from SWEEP_OPTIONS and no --base")
        names = args.names or list(SWEEP_OPTIONS if args.base else SWEEP)
        sweep(args.start, names, args.base, args.lr, args.seed, args.contender)
    elif args.command == "tune":
        for name in args.contenders:
            tune(args.start, name, args.seed)
    elif args.command == "seeds":
        for seed in args.seeds:
            for name in args.contenders:
                rate = adopt_rate(args.start, name, args.rate_of) if args.rate_of else chosen_rate(args.start, name)
                run_one(args.start, name, rate, seed)
    elif args.command == "score":
        score_chosen(args.start)
    else:
        from bench.quality_report import write_report

        write_report()


if __name__ == "__main__":
    main()
