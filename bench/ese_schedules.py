"""ESE schedules against plain training and against slices trained alone, cell by cell (``bench.ese_compare``).

    python -m bench.ese_compare train --start a --seeds 42 43 44
    python -m bench.ese_compare report

Variants, each trained by ``recipes/train_nli.py`` on the same data (2,000 SNLI dev rows, a premise with its
hypotheses each: about 5,500 pairs), steps (62), batch (32 rows), schedule and seeds, final weights:

- ``no-ese``: plain training; ``espresso-pca`` / ``espresso-moe``: ESE with the PCA / learned-head target;
  ``starbucks``: the fixed diagonal of (layer, dims) slices (``ese.schedule: starbucks``);
- ``separate``: every diagonal slice but the full one exported from the start model
  (``recipes/export_slice.py``: its first L layers, first d dims) and fine-tuned alone — the ceiling.

Learning rate: per variant (and per separate slice) the best of the ``--lrs`` candidates (default 2e-5 and 1e-4) by
the mean STS-B **dev** score of its diagonal cells (seed 42); the other seeds run at that rate. ``--variants`` trains
a subset (e.g. more seeds for the runs whose comparison is closest). Test sets are read once per chosen run: the full
layer x dims grid on the suite (7-task average per cell). Starts: ``a`` all-MiniLM-L6-v2, ``b`` its first 3 layers.
Results: ``bench/results/ese_schedules.{json,md}`` and one heatmap per variant, ``ese_schedules_<start>_<variant>.png``.
Run records (``bench/results/ese_runs/<start>/``) are reused; one of other data (the pair layout's 6,000 pairs) is
refused: move the folder aside first (e.g. to ``bench/results/archive/``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.jobs import ESE_RUNS, ESE_VARIANTS, WORK, ese_diagonal, offline, start_model

REPO = Path(__file__).resolve().parents[1]
LEARNING_RATES = (2e-5, 1e-4)
ROWS = 2000  # max_train_samples: SNLI dev rows (about 2.75 pairs each)
BATCH = 32  # rows per batch


def grid_dims(start: str) -> list[int]:
    return sorted({dim for _, dim in ese_diagonal(start)} | {64, 128, 384})


def train(start: str, variant: str, lr: float, seed: int, model: str, output_dir: Path, extra: list[str]) -> None:
    command = [sys.executable, "recipes/train_nli.py", "--config", "configs/smoke_snli.yaml",
               "--model_name_or_path", model, "--max_train_samples", str(ROWS), "--learning_rate", str(lr),
               "--seed", str(seed),
               "--per_device_train_batch_size", str(BATCH), "--eval_strategy", "no", "--save_strategy", "no",
               "--eval_on_start", "false", "--load_best_model_at_end", "false", "--suite_before_training", "false",
               "--sts_tasks", "STSBenchmark", "--output_dir", str(output_dir), "--disable_tqdm", "true",
               *ESE_VARIANTS.get(variant, []), *extra]
    subprocess.run(command, cwd=REPO, check=True)


def grid(folder: Path, tasks: list[str] | None, dims: list[int], output: Path) -> dict:
    """The layer x dims grid of ``folder`` (STS-B dev alone with ``tasks`` None, else those test tasks)."""
    from transformers import AutoModel, AutoTokenizer

    from ese_trainer.data import load_sts_pairs, load_sts_task
    from ese_trainer.evaluation.layer_grid import evaluate_layer_dim_grid
    from ese_trainer.release.run_io import save_grid

    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    suite = ({"dev": load_sts_pairs("data/STS/STSBenchmark/sts-dev.csv", name="dev")} if tasks is None
             else {task: load_sts_task(task) for task in tasks})
    dims = [dim for dim in dims if dim <= model.config.hidden_size]
    result = evaluate_layer_dim_grid(model, tokenizer, suite, "mean", "all", dims, show_progress=False)
    save_grid(result, output, f"{folder.name}: STS avg by layer x dims")
    return result


def diagonal_mean(result: dict, start: str) -> float:
    return statistics.mean(result["avg"][str(layer)][str(dim)] for layer, dim in ese_diagonal(start))


def run(start: str, name: str, lr: float, seed: int) -> dict:
    """One run: train, dev grid; the record under ``ese_runs/<start>/``. ``name`` is a variant or
    ``separate-LxD``."""
    record_file = ESE_RUNS / start / f"{name}_lr{lr:g}_seed{seed}.json"
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        if record.get("rows") != ROWS:
            described = (f"{record['rows']} rows" if "rows" in record
                         else f"{record.get('pairs')} pairs, the pair layout")
            raise SystemExit(f"{record_file}: trained on other data ({described}; this benchmark trains on {ROWS} "
                             f"rows): move {ESE_RUNS} aside (e.g. to bench/results/archive/) and train again")
        return record
    output_dir = WORK / "ese" / start / f"{name}_lr{lr:g}_seed{seed}"
    started = time.perf_counter()
    model = start_model(start)
    if name.startswith("separate-"):
        layer, dim = (int(value) for value in name.removeprefix("separate-").split("x"))
        sliced = WORK / "ese" / start / f"slice-{layer}x{dim}"
        if not (sliced / "config.json").is_file():
            subprocess.run([sys.executable, "recipes/export_slice.py", "--model_name_or_path", model, "--layer",
                            str(layer), "--dim", str(dim), "--output_dir", str(sliced)], cwd=REPO, check=True)
        model = str(sliced)
        extra = ["--embedding_dim", str(dim)]
    else:
        extra = []
    print(f"== ESE start {start}: {name}, lr {lr:g}, seed {seed}", flush=True)
    train(start, name, lr, seed, model, output_dir, extra)
    dev = grid(output_dir, None, grid_dims(start), output_dir / "dev_grid")
    counts = json.loads((output_dir / "data_counts.json").read_text())["sources"][0]["rows"]
    steps = json.loads((output_dir / "trainer_state.json").read_text())["global_step"]
    record = {"start": start, "name": name, "learning_rate": lr, "seed": seed, "rows": counts["rows"],
              "pairs": counts["ranking_pairs"], "steps": steps, "batch": BATCH,
              "dev_grid": dev["avg"], "train_seconds": round(time.perf_counter() - started, 1),
              "folder": os.path.relpath(output_dir, REPO)}
    if name.startswith("separate-"):
        layer, dim = (int(value) for value in name.removeprefix("separate-").split("x"))
        record["slice"] = [layer, dim]
        record["dev_slice"] = dev["avg"][str(layer)][str(dim)]
    else:
        record["dev_diagonal_mean"] = diagonal_mean(dev, start)
    record_file.parent.mkdir(parents=True, exist_ok=True)
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    return record


def score_on_tests(start: str, record: dict) -> dict:
    """The chosen run's grid on the test suite (cached in its record)."""
    if "test_grid" not in record:
        from ese_trainer.data import STS_TASKS

        folder = REPO / record["folder"]
        result = grid(folder, list(STS_TASKS), grid_dims(start), folder / "test_grid")
        record["test_grid"] = result["avg"]
        name = f"{record['name']}_lr{record['learning_rate']:g}_seed{record['seed']}.json"
        (ESE_RUNS / start / name).write_text(json.dumps(record, indent=2) + "\n")
    return record


def choose_lr(start: str, name: str, lrs: tuple[float, ...] = LEARNING_RATES) -> float:
    records = [run(start, name, lr, 42) for lr in lrs]
    key = "dev_slice" if name.startswith("separate-") else "dev_diagonal_mean"
    return max(records, key=lambda record: record[key])["learning_rate"]


def variant_names(start: str) -> list[str]:
    """The schedules, then one ``separate-LxD`` per diagonal slice but the full one."""
    return [*ESE_VARIANTS, *(f"separate-{layer}x{dim}" for layer, dim in ese_diagonal(start)[:-1])]


def train_all(start: str, seeds: list[int], lrs: tuple[float, ...] = LEARNING_RATES,
              names: list[str] | None = None) -> None:
    for name in names or variant_names(start):
        lr = choose_lr(start, name, lrs)
        for seed in seeds:
            score_on_tests(start, run(start, name, lr, seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train")
    train_parser.add_argument("--start", choices=("a", "b"), required=True)
    train_parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    train_parser.add_argument("--lrs", type=float, nargs="+", default=list(LEARNING_RATES),
                              help="candidate learning rates, chosen per variant on dev (one: no choice)")
    train_parser.add_argument("--variants", nargs="+", help="a subset of: no-ese espresso-pca espresso-moe "
                              "starbucks separate-LxD (default: all)")
    commands.add_parser("report")
    args = parser.parse_args()
    offline()
    if args.command == "train":
        unknown = set(args.variants or ()) - set(variant_names(args.start))
        if unknown:
            parser.error(f"--variants: unknown {sorted(unknown)}; choose from {variant_names(args.start)}")
        train_all(args.start, args.seeds, tuple(args.lrs), args.variants)
    else:
        from bench.ese_report import write_report

        write_report()


if __name__ == "__main__":
    main()
