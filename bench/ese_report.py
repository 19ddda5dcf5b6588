"""The ESE schedules' tables and heatmaps, from the run records of ``bench/ese_schedules.py``.

    python -m bench.ese_compare report

Per start: the data the runs trained on (rows, their pairs, steps), the diagonal table (each (layer, dims) slice:
every variant's 7-task test average, mean ± std over seeds, and the slice trained alone), the full-size cell, and
the mean of each variant's whole grid; a heatmap of each variant's seed-mean grid. Only records of the row layout
count (a record of the pair layout, with ``pairs`` but no ``rows``, is skipped and reported). Writes
``bench/results/ese_schedules.{json,md}`` and ``bench/results/ese_schedules_<start>_<variant>.png``.
"""

from __future__ import annotations

import json
import statistics

from bench.jobs import ESE_RUNS, ESE_VARIANTS, RESULTS, ese_diagonal
from bench.machine import describe_machine


def _stats(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def collect() -> dict:
    """``{start: {name: [records with a test grid]}}``, each name at its chosen learning rate (row-layout records
    only: pair-layout ones are skipped, and counted on stdout)."""
    summary: dict = {}
    skipped = 0
    for folder in sorted(ESE_RUNS.glob("*")):
        records = [json.loads(path.read_text()) for path in folder.glob("*.json")]
        by_name: dict[str, list[dict]] = {}
        for record in records:
            if "rows" not in record:  # trained on pairs (the previous data layout): not comparable
                skipped += 1
            elif "test_grid" in record:  # only the chosen learning rate's runs are scored on the tests
                by_name.setdefault(record["name"], []).append(record)
        by_name = {name: sorted(chosen, key=lambda r: r["seed"]) for name, chosen in by_name.items()}
        if by_name:
            summary[folder.name] = by_name
    if skipped:
        print(f"skipped {skipped} run record(s) of the pair layout under {ESE_RUNS}")
    return summary


def data_line(by_name: dict) -> str:
    """What the runs of one start trained on (one setting, unless records of several were mixed)."""
    settings = sorted({(r["rows"], r["pairs"], r["steps"], r["batch"]) for records in by_name.values()
                       for r in records})
    return "Data: " + "; ".join(f"{rows:,} SNLI dev rows ({pairs:,} pairs), {steps} steps of {batch} rows"
                                for rows, pairs, steps, batch in settings) + "."


def mean_grid(records: list[dict]) -> dict[str, dict[str, float]]:
    first = records[0]["test_grid"]
    return {layer: {dim: statistics.mean(r["test_grid"][layer][dim] for r in records) for dim in row}
            for layer, row in first.items()}


def markdown(summary: dict) -> str:
    lines = ["# ESE schedules, cell by cell", "",
             "7-task STS test average (cosine Spearman x100) of each (layer, leading dims) slice, mean ± std over "
             "seeds; every variant trained on the same SNLI dev rows (a premise with its hypotheses each; the data "
             "and steps under each start), final weights, its "
             "learning rate chosen among the candidates given to `train --lrs` on the STS-B dev mean of its diagonal "
             "cells (seed 42). `separate`: the slice exported from the start model (`recipes/export_slice.py`) and "
             "fine-tuned alone at its size. Command: `python -m bench.ese_compare train --start a|b --seeds 42 43 44 "
             "--lrs ...`, then `python -m bench.ese_compare report`.", "", f"Machine: {describe_machine()}", ""]
    for start, by_name in summary.items():
        variants = [name for name in ESE_VARIANTS if name in by_name]
        lines += [f"## Start ({start})", "", data_line(by_name), "",
                  "| slice (layer x dims) | " + " | ".join(variants) + " | separate |",
                  "|---" * (len(variants) + 2) + "|"]
        for layer, dim in ese_diagonal(start):
            cells = [_stats([r["test_grid"][str(layer)][str(dim)] for r in by_name[name]]) for name in variants]
            alone = by_name.get(f"separate-{layer}x{dim}")
            separate = _stats([r["test_grid"][str(layer)][str(dim)] for r in alone]) if alone else "–"
            lines.append(f"| {layer} x {dim} | " + " | ".join(cells) + f" | {separate} |")
        grid_means = [_stats([statistics.mean(v for row in r["test_grid"].values() for v in row.values())
                              for r in by_name[name]]) for name in variants]
        lines += ["| mean of the whole grid | " + " | ".join(grid_means) + " | – |", "",
                  "Learning rate and seeds: " + ", ".join(
                      f"{name} {records[0]['learning_rate']:g} ({', '.join(str(r['seed']) for r in records)})"
                      for name, records in sorted(by_name.items())) + ".", ""]
    return "\n".join(lines)


def heatmaps(summary: dict) -> None:
    from ese_trainer.release.plots import plot_layer_dim_heatmap

    for start, by_name in summary.items():
        for name in ESE_VARIANTS:
            if name not in by_name:
                continue
            grid = mean_grid(by_name[name])
            layers = sorted(grid, key=int)
            dims = sorted(grid[layers[0]], key=int)
            plot_layer_dim_heatmap([[grid[layer][dim] for dim in dims] for layer in layers], [int(v) for v in layers],
                                   [int(v) for v in dims], RESULTS / f"ese_schedules_{start}_{name}.png",
                                   f"start ({start}), {name}: 7-task STS avg, mean of {len(by_name[name])} seeds")


def write_report() -> None:
    summary = collect()
    if not summary:
        raise SystemExit(f"no ESE run of the row layout scored on the test suite under {ESE_RUNS} yet: run "
                         "`python -m bench.ese_compare train ...`")
    (RESULTS / "ese_schedules.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    (RESULTS / "ese_schedules.md").write_text(text + "\n")
    heatmaps(summary)
    print(text)
