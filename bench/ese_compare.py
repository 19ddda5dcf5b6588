"""Compare layer x dimension grids of runs trained on the same data and steps (ESE vs. not, PCA vs. MoE target).

    python -m bench.ese_compare --grid non-ESE=outputs/grid_smoke_lr2e-5/grid.json \
        --grid ESE-pca=outputs/ese_smoke/ese_grid.json --grid ESE-moe=outputs/ese_smoke_moe/ese_grid.json \
        --reference non-ESE --output bench/results/ese_grid_comparison.json

The grids compared must have the same cells. The ``ese_grid_comparison_*`` records compare Espresso runs: train
them with ``configs/ese_smoke.yaml --ese.schedule espresso`` (``--ese.compression_target moe`` for ESE-moe), since
that config now trains the default Starbucks schedule, whose grid has the dims of its slices too.

For each run: the STS average of every (layer, dims) cell, the mean over the *reduced* cells (every cell but
the full one: shallower layers and/or fewer dims, what ESE trains), and the full (last layer, all dims)
cell; differences against the reference run. Writes JSON and a Markdown table beside it.

The schedules against their slices trained alone, on the quality protocol: ``bench/ese_vs_twins.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load_grid(path: Path) -> dict:
    grid = json.loads(path.read_text())
    return {"layers": grid["layers"], "dims": grid["dims"], "avg": grid["avg"]}


def summarise(grid: dict) -> dict:
    last, full = str(grid["layers"][-1]), str(grid["dims"][-1])
    reduced = [grid["avg"][str(layer)][str(dim)] for layer in grid["layers"] for dim in grid["dims"]
               if (str(layer), str(dim)) != (last, full)]
    return {"reduced_cells_mean": sum(reduced) / len(reduced), "full_cell": grid["avg"][last][full],
            "reduced_cells": len(reduced)}


def compare(grids: dict[str, dict], reference: str) -> dict:
    base = grids[reference]
    runs = {}
    for name, grid in grids.items():
        if (grid["layers"], grid["dims"]) != (base["layers"], base["dims"]):
            raise ValueError(f"{name}: grid cells differ from {reference}'s; evaluate both with the same layers/dims")
        summary = summarise(grid)
        cells = {layer: {dim: grid["avg"][layer][dim] - base["avg"][layer][dim] for dim in grid["avg"][layer]}
                 for layer in grid["avg"]}
        summary["cells_minus_reference"] = cells
        summary["cells_beating_reference"] = sum(value > 0 for row in cells.values() for value in row.values())
        runs[name] = summary
    reference_runs = runs[reference]
    for summary in runs.values():
        summary["reduced_mean_minus_reference"] = summary["reduced_cells_mean"] - reference_runs["reduced_cells_mean"]
        summary["full_cell_minus_reference"] = summary["full_cell"] - reference_runs["full_cell"]
    return runs


def markdown(grids: dict[str, dict], runs: dict, reference: str) -> str:
    lines = [f"Reference: `{reference}`. Reduced cells = every (layer, dims) cell except the full one.", "",
             "| run | reduced cells mean | Δ vs ref | full cell | Δ vs ref | cells above ref |",
             "|---|---|---|---|---|---|"]
    total = sum(len(row) for row in next(iter(grids.values()))["avg"].values())
    for name, summary in runs.items():
        lines.append(f"| {name} | {summary['reduced_cells_mean']:.2f} | {summary['reduced_mean_minus_reference']:+.2f} "
                     f"| {summary['full_cell']:.2f} | {summary['full_cell_minus_reference']:+.2f} "
                     f"| {summary['cells_beating_reference']}/{total} |")
    for name, grid in grids.items():
        dims = grid["dims"]
        lines += ["", f"**{name}** (STS avg; Δ vs `{reference}` in brackets)", "",
                  "| layer \\ dims | " + " | ".join(str(dim) for dim in dims) + " |", "|---" * (len(dims) + 1) + "|"]
        for layer in grid["layers"]:
            row = grid["avg"][str(layer)]
            delta = runs[name]["cells_minus_reference"][str(layer)]
            lines.append(f"| {layer} | " + " | ".join(f"{row[str(dim)]:.2f} ({delta[str(dim)]:+.2f})" for dim in dims)
                         + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", action="append", required=True, help="NAME=path/to/grid.json (repeat)")
    parser.add_argument("--reference", required=True, help="NAME of the run the others are compared with")
    parser.add_argument("--output", default="bench/results/ese_grid_comparison.json")
    args = parser.parse_args()
    grids = {}
    for item in args.grid:
        name, _, path = item.partition("=")
        grids[name] = load_grid(Path(path))
    if args.reference not in grids:
        parser.error(f"--reference {args.reference!r} is not one of {list(grids)}")
    runs = compare(grids, args.reference)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"command": " ".join(["python -m bench.ese_compare", *sys.argv[1:]]),
                                  "grids": {name: str(path) for name, path in
                                            (item.partition("=")[::2] for item in args.grid)},
                                  "runs": runs}, indent=2) + "\n")
    table = markdown(grids, runs, args.reference)
    output.with_suffix(".md").write_text("# ESE layer x dimension grids compared\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
