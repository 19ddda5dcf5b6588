"""ESE against its slices trained alone, and MoE against dense, on the quality protocol (``bench.quality_vs_peers``).

    python -m bench.ese_vs_twins ese --start b     # ours, ours-espresso, ours-starbucks and a twin per diagonal slice
    python -m bench.ese_vs_twins moe --start b     # ours, ours-moe, ours-moe2; then ours-long (ours-moe's wall clock)
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
alone with ``--embedding_dim D``; the full slice's twin is ``ours`` itself. ``ours-long`` is dense ``ours`` given
the wall clock of ``ours-moe``: its passes are ``EPOCHS`` times the median ratio of their seconds per step over
the seeds both ran (``bench.quality_vs_peers.passes``, frozen in ``equal_time.json``), so it runs after ours-moe's
seeds.

``BENCH_QUALITY_TINY=1`` runs either plan at a tiny size under ``outputs/quality-tiny/`` (``bench.jobs``): a check
of the whole chain, never a result.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.jobs import CONTENDERS, SEEDS, STARTS, ese_diagonal, offline
from bench.quality_vs_peers import chosen_rate, load_encoder, run_one, score_chosen_runs, tune

ESE_CONTENDERS = ("ours", "ours-espresso", "ours-starbucks")
MOE_CONTENDERS = ("ours", "ours-moe", "ours-moe2")
EQUAL_TIME = ("ours-long",)  # after MOE_CONTENDERS: their seconds per step set its passes
GRID_DIMS = (64, 128, 256, 384)


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
    score_grids(start, names)


def moe_plan(start: str) -> None:
    run_plan(start, MOE_CONTENDERS)
    run_plan(start, EQUAL_TIME)
    score_grids(start, [*MOE_CONTENDERS, *EQUAL_TIME])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for command, text in (("ese", "no-ESE, Espresso, Starbucks and the twins (resumes)"),
                          ("moe", "dense, MoE in every layer and every second one, dense at MoE's time (resumes)")):
        plan_parser = commands.add_parser(command, help=text)
        plan_parser.add_argument("--start", choices=STARTS, default="b")
    commands.add_parser("report", help="bench/results/ese_vs_twins.{json,md,png} from the records")
    args = parser.parse_args()
    offline()
    if args.command == "ese":
        ese_plan(args.start)
    elif args.command == "moe":
        moe_plan(args.start)
    else:
        from bench.ese_report import write_report

        write_report()


if __name__ == "__main__":
    main()
