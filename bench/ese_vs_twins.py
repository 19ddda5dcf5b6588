"""ESE against its slices trained alone, and MoE against dense, on the quality protocol (``bench.quality_vs_peers``).

    python -m bench.ese_vs_twins ese --start b     # ours, ours-espresso, ours-starbucks, a twin per diagonal slice;
                                                   # then ours-starbucks-eq (the twins' and ours' wall clock)
    python -m bench.ese_vs_twins moe --start b     # ours, ours-moe, ours-moe2; then ours-long (ours-moe's wall clock)
    python -m bench.ese_vs_twins time --start b    # on a quiet machine, before the equal-time runs: their step times
    python -m bench.ese_vs_twins report            # bench/results/ese_vs_twins.{json,md,png}

Each plan resumes from the records (``bench/results/quality_runs/<start>/``, shared with the quality comparison:
``ours`` is the same contender and the same runs). Every contender: its learning rate by successive halving on
STS-B dev inside the extended grid (``tune``, seed 42), its checkpoint chosen on dev (an ESE contender by the mean
of its trained slices' dev scores, ``sts_dev_slices_spearman``), seeds 42, 43 and 44 at that rate. Then, the only
time test sets are read, the full layer x dims grid of every chosen run on the 7-task STS suite
(:func:`~ese_trainer.evaluation.layer_grid.evaluate_layer_dim_grid`), kept in its record as ``test_grid`` (and the
full cell's tasks as ``test``); an MoE run's expert utilisation (``expert_utilisation.json``, last logged window)
as ``routing``.

The twin of the diagonal slice ``(L, D)`` (``ese_diagonal``: ``default_diagonal(3, 384)`` at start b, (1, 128)
(2, 256) (3, 384)) is the start cut to its first L layers and first D dims (``recipes/export_slice.py``) trained
alone with ``--embedding_dim D``; the full slice's twin is ``ours`` itself. ``ours-starbucks-eq`` is Starbucks given
the training time of its whole diagonal trained separately (the twins and ours): one run for what three cost.
``ours-long`` is dense ``ours`` given the wall clock of ``ours-moe``. An equal-time contender's passes are
``EPOCHS`` times its references' summed seconds per step over its base's (ours-moe over ours; ours, the twins over
ours-starbucks), timed by ``time`` on a quiet machine (each contender's job cut to ``TIMED_STEPS`` steps without
evaluation, one thread as in every quality run, ``TIMED_ROUNDS`` rounds alternating, the median round's ratio) and
frozen in ``equal_time.json`` (``bench.quality_vs_peers.passes``). The runs' own wall clocks are not used: they
ran beside another job, some through pauses.

``BENCH_QUALITY_TINY=1`` runs either plan at a tiny size under ``outputs/quality-tiny/`` (``bench.jobs``): a check
of the whole chain, never a result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import yaml
from tqdm import tqdm

from bench import jobs
from bench.jobs import CONTENDERS, REPO, SEEDS, STARTS, ese_diagonal, exclusive, offline, write_atomically
from bench.machine import busy_cores, describe_machine
from bench.quality_vs_peers import (
    chosen_rate,
    equal_time_path,
    load_encoder,
    recipe_config,
    run_one,
    score_chosen_runs,
    tune,
)

ESE_CONTENDERS = ("ours", "ours-espresso", "ours-starbucks")
MOE_CONTENDERS = ("ours", "ours-moe", "ours-moe2")
# Given others' wall clock (``Contender.time_of``), after the plan's contenders: their seconds per step set the passes.
ESE_EQUAL_TIME = ("ours-starbucks-eq",)
MOE_EQUAL_TIME = ("ours-long",)
EQUAL_TIME = (*MOE_EQUAL_TIME, *ESE_EQUAL_TIME)
GRID_DIMS = (64, 128, 256, 384)
TIMED_STEPS, TIMED_ROUNDS = 40, 3
QUIET_BELOW = 0.25  # busy cores (other processes) under which a timing may start


def twins(start: str) -> list[str]:
    """The twin contender of every diagonal slice but the full one (whose twin is ``ours``)."""
    names = [f"twin-{layer}x{dim}" for layer, dim in ese_diagonal(start)[:-1]]
    missing = [name for name in names if name not in CONTENDERS]
    if missing:
        raise SystemExit(f"start {start}: no contender for {missing} in bench.jobs.CONTENDERS (add twin(L, D))")
    return names


def grid_dims(start: str) -> list[int]:
    return sorted({dim for _, dim in ese_diagonal(start)} | set(GRID_DIMS))


def run_plan(start: str, names: list[str] | tuple[str, ...]) -> None:
    """Every contender's rate (``tune``, seed 42), then seeds 43 and 44 at it, resuming from the records."""
    for name in names:
        tune(start, name, SEEDS[0])
        score_grids(start, names)
    for seed in SEEDS[1:]:
        for name in names:
            run_one(start, name, chosen_rate(start, name), seed)
            score_grids(start, names)


def full_cell(record: dict, grid: dict) -> tuple[str, str]:
    """The released embedding's cell: a twin's own slice, else the last layer at full width."""
    start_slice = CONTENDERS[record["contender"]].start_slice
    if start_slice is not None:
        return str(start_slice[0]), str(start_slice[1])
    return str(max(grid["layers"])), str(max(grid["dims"]))


def routing_summary(folder: Path) -> dict | None:
    """An MoE run's expert utilisation in its last logged window: shares and dead experts per layer."""
    path = folder / "expert_utilisation.json"
    if not path.is_file():
        return None
    utilisation = json.loads(path.read_text())
    return {"step": utilisation["final"]["step"], "balanced_share": utilisation["balanced_share"],
            "min_share": utilisation["min_share"], "dead_experts": utilisation["dead_experts"],
            "shares": {layer: values["shares"] for layer, values in utilisation["final"]["layers"].items()}}


def score_grids(start: str, names: list[str] | tuple[str, ...]) -> None:
    """The test suite's layer x dims grid of every whole-pass run at its contender's chosen rate (cached in the
    record as ``test_grid``; ``test`` = the released embedding's cell, per task and averaged). A contender not yet
    tuned has nothing to score."""
    score_chosen_runs(start, names, "test_grid",
                      lambda record, folder, suite: scored_grid(start, record, folder, suite))


def scored_grid(start: str, record: dict, folder: Path, suite: dict) -> dict:
    """A run's test fields: its layer x dims grid on the suite, the released cell's tasks, an MoE run's routing."""
    from ese_trainer.evaluation.layer_grid import evaluate_layer_dim_grid

    model, tokenizer = load_encoder(folder, start)
    dims = [dim for dim in grid_dims(start) if dim <= model.config.hidden_size]
    grid = evaluate_layer_dim_grid(model, tokenizer, suite, "mean", "all", dims, show_progress=False)
    layer, dim = full_cell(record, grid)
    fields = {"test_grid": grid["avg"], "test": {**{task: cells[layer][dim] for task, cells in grid["tasks"].items()},
                                                 "avg": grid["avg"][layer][dim]}}
    routing = routing_summary(folder)
    return fields if routing is None else {**fields, "routing": routing}


def ese_plan(start: str) -> None:
    names = [*ESE_CONTENDERS, *twins(start)]
    run_plan(start, names)
    run_plan(start, ESE_EQUAL_TIME)
    score_grids(start, [*names, *ESE_EQUAL_TIME])


def moe_plan(start: str) -> None:
    run_plan(start, MOE_CONTENDERS)
    run_plan(start, MOE_EQUAL_TIME)
    score_grids(start, [*MOE_CONTENDERS, *MOE_EQUAL_TIME])


def timed_seconds_per_step(start: str, name: str, output_dir: Path) -> float:
    """Seconds per optimizer step of ``name``'s quality job cut to ``TIMED_STEPS`` steps, without evaluation or
    checkpoints, one thread: the Trainer's ``train_runtime`` over the steps."""
    contender = CONTENDERS[name]
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)
    config = recipe_config(start, contender, 1e-4, SEEDS[0], TIMED_STEPS, output_dir) | {
        "max_steps": TIMED_STEPS, "eval_strategy": "no", "save_strategy": "no", "load_best_model_at_end": False}
    (output_dir / "job.yaml").write_text(yaml.safe_dump(config))
    subprocess.run([sys.executable, "recipes/train_nli.py", "--config", str(output_dir / "job.yaml"),
                    *contender.recipe_args], cwd=REPO, check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    return json.loads((output_dir / "train_results.json").read_text())["train_runtime"] / TIMED_STEPS


def equal_time_entry(seconds: dict[str, list[float]], references: tuple[str, ...], base: str) -> dict:
    """The frozen ratio from alternating timings: per round, the ``references``' summed seconds per step over
    ``base``'s; the median round's."""
    ratios = [sum(seconds[name][index] for name in references) / seconds[base][index]
              for index in range(len(seconds[base]))]
    return {"ratio": round(statistics.median(ratios), 3), "of": " + ".join(references), "against": base,
            "seconds_per_step": {key: [round(value, 4) for value in values] for key, values in seconds.items()},
            "round_ratios": [round(ratio, 4) for ratio in ratios],
            "derived_as": f"median over rounds of ({' + '.join(references)} s/step) / ({base} s/step), alternating, "
                          "quiet"}


def time_equal_time(start: str, names: tuple[str, ...] = EQUAL_TIME) -> None:
    """Each equal-time contender's passes: its references' summed seconds per step over its base's
    (``Contender.time_of`` over ``time_against``), ``TIMED_ROUNDS`` rounds alternating them (the order reversed each
    round), the median round's ratio, frozen in ``equal_time.json``. Refused beside another job
    (:func:`~bench.machine.busy_cores`) and once frozen (runs may have used it)."""
    path = equal_time_path(start)
    for name in names:
        references, base = CONTENDERS[name].time_of, CONTENDERS[name].time_against
        with exclusive(f"{start}-equal-time"):
            frozen = json.loads(path.read_text()) if path.is_file() else {}
        if name in frozen:
            print(f"start {start}, {name}: frozen at {frozen[name]['ratio']} (remove its entry only if no run used it)")
            continue
        if (busy := busy_cores()) > QUIET_BELOW:
            raise SystemExit(f"{busy:.1f} cores are busy: the equal-time ratio is timed on a quiet machine (pause or "
                             "finish the other jobs first)")
        seconds: dict[str, list[float]] = {contender: [] for contender in (*references, base)}
        order = [*references, base]
        rounds = [order if index % 2 == 0 else order[::-1] for index in range(TIMED_ROUNDS)]
        for contender in tqdm([item for names_in_round in rounds for item in names_in_round],
                              desc=f"{' + '.join(references)} vs {base}, timed"):
            folder = jobs.WORK / "timing" / start / contender
            seconds[contender].append(timed_seconds_per_step(start, contender, folder))
        entry = {**equal_time_entry(seconds, references, base), "steps_timed": TIMED_STEPS, "threads": 1,
                 "busy_cores_before": round(busy, 2), "machine": describe_machine(),
                 "command": f"python -m bench.ese_vs_twins time --start {start}"}
        with exclusive(f"{start}-equal-time"):
            frozen = json.loads(path.read_text()) if path.is_file() else {}
            write_atomically(path, json.dumps({**frozen, name: entry}, indent=2) + "\n")
        print(f"start {start}, {name}: passes x {entry['ratio']} (rounds {entry['round_ratios']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for command, text in (("ese", "no-ESE, Espresso, Starbucks and the twins (resumes)"),
                          ("moe", "dense, MoE in every layer and every second one, dense at MoE's time (resumes)")):
        plan_parser = commands.add_parser(command, help=text)
        plan_parser.add_argument("--start", choices=STARTS, default="b")
    time_parser = commands.add_parser("time", help="on a quiet machine: the equal-time contenders' step-time ratios "
                                      "(frozen)")
    time_parser.add_argument("--start", choices=STARTS, default="b")
    commands.add_parser("report", help="bench/results/ese_vs_twins.{json,md,png} from the records")
    args = parser.parse_args()
    offline()
    if args.command == "ese":
        ese_plan(args.start)
    elif args.command == "moe":
        moe_plan(args.start)
    elif args.command == "time":
        time_equal_time(args.start)
    else:
        from bench.ese_report import write_report

        write_report()


if __name__ == "__main__":
    main()
