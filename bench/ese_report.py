"""ESE against its slices trained alone, and MoE against dense: tables and a plot from the quality protocol's records
(``bench/ese_vs_twins.py``).

    python -m bench.ese_vs_twins report

ESE, per start: for every diagonal slice ``(L, D)`` the 7-task STS test average of each variant's cell (no ESE,
Espresso, Starbucks; mean ± std over seeds) beside its twin's (the start cut to that slice and trained alone; the
full slice's twin is no-ESE itself), the seed-paired gap ``variant − twin`` and the seeds it wins; the targets:
every diagonal slice of an ESE variant ``≥ twin − 1.0`` and its full model ``≥ no-ESE − 0.3``. MoE: the 7-task
average of dense, MoE in every layer and in every second layer at equal steps, of MoE against dense given MoE's
wall clock (``ours-long``), seconds per step, and each layer's expert shares and dead experts (the run's last
logged window). Writes ``bench/results/ese_vs_twins.{json,md,png}``.
"""

from __future__ import annotations

import json
import statistics

from bench.jobs import RESULTS, RUNS, STARTS, ese_diagonal, machines_of

ESE_VARIANTS = {"ours": "no ESE", "ours-espresso": "Espresso", "ours-starbucks": "Starbucks",
                "ours-starbucks-eq": "Starbucks at the diagonal's time"}
MOE_ROWS = {"ours": "dense", "ours-moe": "MoE, every layer", "ours-moe2": "MoE, every 2nd layer",
            "ours-long": "dense, MoE's wall clock"}
SLICE_TOLERANCE = 1.0  # an ESE variant's diagonal slice within this of its twin (7-task average)
FULL_TOLERANCE = 0.3  # an ESE variant's full model within this of no-ESE
COMMAND = "python -m bench.ese_vs_twins ese|moe --start b, then python -m bench.ese_vs_twins report"


def scored(start: str, name: str) -> tuple[dict, dict[int, dict]]:
    """The contender's tuning and its records at the chosen rate with a test grid, by seed."""
    tuned_file = RUNS / start / "tuned.json"
    tuning = json.loads(tuned_file.read_text()).get(name) if tuned_file.is_file() else None
    if tuning is None:
        return {}, {}
    lr = tuning["learning_rate"]
    records = (json.loads(path.read_text()) for path in sorted((RUNS / start).glob(f"{name}_lr{lr:g}_seed*.json")))
    return tuning, {record["seed"]: record for record in records if "test_grid" in record}


def stats(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def paired(these: dict[int, float], those: dict[int, float]) -> dict | None:
    """``these − those`` over the seeds both have: mean, std, and the seeds ``these`` is ahead on."""
    seeds = sorted(set(these) & set(those))
    if not seeds:
        return None
    gaps = [these[seed] - those[seed] for seed in seeds]
    return {**stats(gaps), "seeds": seeds, "won": sum(gap > 0 for gap in gaps)}


def slice_scores(records: dict[int, dict], layer: int, dim: int) -> dict[int, float]:
    return {seed: record["test_grid"][str(layer)][str(dim)] for seed, record in records.items()
            if str(dim) in record["test_grid"].get(str(layer), {})}


def ese_summary(start: str) -> dict | None:
    variants = {name: scored(start, name)[1] for name in ESE_VARIANTS}
    if not any(variants.values()):
        return None
    diagonal = ese_diagonal(start)
    full_layer, full_dim = diagonal[-1]
    rows = []
    for layer, dim in diagonal:
        if (layer, dim) == (full_layer, full_dim):
            twin_name, twin = "ours", slice_scores(variants["ours"], layer, dim)
        else:
            twin_name = f"twin-{layer}x{dim}"
            twin = slice_scores(scored(start, twin_name)[1], layer, dim)
        row = {"slice": [layer, dim], "twin_contender": twin_name, "twin": stats(list(twin.values())),
               "variants": {}}
        for name, records in variants.items():
            scores = slice_scores(records, layer, dim)
            gap = None if name == twin_name else paired(scores, twin)
            row["variants"][name] = {"test": stats(list(scores.values())), "gap_to_twin": gap,
                                     "meets_target": None if gap is None or name == "ours"
                                     else gap["mean"] >= -SLICE_TOLERANCE}
        rows.append(row)
    no_ese = slice_scores(variants["ours"], full_layer, full_dim)
    full = {}
    for name in ESE_VARIANTS:
        if name != "ours":
            gap = paired(slice_scores(variants[name], full_layer, full_dim), no_ese)
            full[name] = {"gap_to_no_ese": gap, "meets_target": None if gap is None
                          else gap["mean"] >= -FULL_TOLERANCE}
    rates = {name: scored(start, name)[0].get("learning_rate")
             for name in [*ESE_VARIANTS, *(row["twin_contender"] for row in rows)]}
    return {"diagonal": rows, "full_size": full, "learning_rates": rates,
            "equal_time_passes": equal_time_passes(start, ESE_VARIANTS)}


def moe_summary(start: str) -> dict | None:
    rows = {}
    for name in MOE_ROWS:
        tuning, records = scored(start, name)
        if not records:
            continue
        routing = {seed: record["routing"] for seed, record in records.items() if "routing" in record}
        rows[name] = {
            "learning_rate": tuning["learning_rate"], "seeds": sorted(records),
            "passes": records[min(records)].get("passes", 1), "steps": records[min(records)]["steps"],
            "test": stats([record["test"]["avg"] for record in records.values()]),
            "dev": stats([record["selected_dev"] for record in records.values()]),
            "seconds_per_step": statistics.median(record["train_seconds"] / (record.get("steps_run") or record["steps"])
                                                  for record in records.values()),
            "routing": routing}
    if set(rows) <= {"ours"}:
        return None

    def avg(name: str) -> dict[int, float]:
        return {seed: record["test"]["avg"] for seed, record in scored(start, name)[1].items()}

    return {"contenders": rows,
            "equal_steps": {name: paired(avg(name), avg("ours")) for name in ("ours-moe", "ours-moe2")},
            "equal_time": {"ours-moe": paired(avg("ours-moe"), avg("ours-long"))},
            "equal_time_passes": equal_time_passes(start, MOE_ROWS)}


def collect() -> dict:
    summary = {}
    for start in STARTS:
        entry = {"ese": ese_summary(start), "moe": moe_summary(start)}
        if entry["ese"] or entry["moe"]:
            names = [*ESE_VARIANTS, *(f"twin-{layer}x{dim}" for layer, dim in ese_diagonal(start)[:-1]), *MOE_ROWS]
            runs = [record for name in dict.fromkeys(names) for record in scored(start, name)[1].values()]
            summary[start] = {**entry, "machines": machines_of(runs)}
    return summary


def mean_std(value: dict | None) -> str:
    if value is None:
        return "–"
    return f"{value['mean']:.2f}" + (f" ± {value['std']:.2f}" if value["std"] is not None else "")


def gap_text(gap: dict | None) -> str:
    if gap is None:
        return "–"
    return f"{gap['mean']:+.2f} ({gap['won']}/{len(gap['seeds'])})"


def verdict(meets: bool | None) -> str:
    return "–" if meets is None else ("yes" if meets else "**no**")


def ese_markdown(start: str, ese: dict) -> list[str]:
    names = list(ESE_VARIANTS)
    lines = [f"## Start ({start}): ESE against its slices trained alone", "",
             "7-task test average of each diagonal slice, mean ± std over seeds; gap: the variant minus the twin "
             "seed by seed (seeds the variant wins); target: every slice of an ESE variant ≥ twin − "
             f"{SLICE_TOLERANCE}.", "",
             "| slice (layers x dims) | twin | " + " | ".join(
                 f"{ESE_VARIANTS[name]} | gap" for name in names) + " | target met (" + ", ".join(
                 ESE_VARIANTS[name] for name in names[1:]) + ") |",
             "|---" * (3 + 2 * len(names)) + "|"]
    for row in ese["diagonal"]:
        layer, dim = row["slice"]
        cells = []
        for name in names:
            variant = row["variants"][name]
            cells += [mean_std(variant["test"]), gap_text(variant["gap_to_twin"])]
        met = ", ".join(verdict(row["variants"][name]["meets_target"]) for name in names[1:])
        lines.append(f"| {layer} x {dim} ({row['twin_contender']}) | {mean_std(row['twin'])} | "
                     + " | ".join(cells) + f" | {met} |")
    lines += ["", f"Full size against no ESE (target ≥ −{FULL_TOLERANCE}): " + "; ".join(
        f"{ESE_VARIANTS[name]} {gap_text(item['gap_to_no_ese'])}, met: {verdict(item['meets_target'])}"
        for name, item in ese["full_size"].items()) + ".", "",
        "Learning rates (chosen on dev): " + ", ".join(
            f"{name} {rate:g}" for name, rate in ese["learning_rates"].items() if rate is not None) + ".",
        *passes_lines(ese["equal_time_passes"]), ""]
    return lines


def passes_lines(frozen: dict) -> list[str]:
    """How each equal-time contender's passes were derived (``equal_time.json``'s entries)."""
    return [f"`{name}` passes: {item['ratio']:g} x, {item['derived_as']} ({item['steps_timed']} steps each; "
            f"{item['machine']}; `{item['command']}`)." for name, item in frozen.items()]


def equal_time_passes(start: str, names) -> dict:
    """The frozen equal-time entries of ``names`` at the start."""
    path = RUNS / start / "equal_time.json"
    frozen = json.loads(path.read_text()) if path.is_file() else {}
    return {name: frozen[name] for name in names if name in frozen}


def routing_text(routing: dict) -> str:
    if not routing:
        return "–"
    parts = []
    for seed, summary in sorted(routing.items()):
        dead = ", ".join(f"layer {layer}: {len(experts)}" for layer, experts in summary["dead_experts"].items())
        parts.append(f"seed {seed}: min share {summary['min_share']:.3f}; dead {dead}")
    return "; ".join(parts)


def moe_markdown(start: str, moe: dict) -> list[str]:
    lines = [f"## Start ({start}): MoE against dense", "",
             "| contender | rate | passes | steps | s / step | dev | 7-task test avg | experts (last window) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in moe["contenders"].items():
        lines.append(f"| {MOE_ROWS[name]} (`{name}`) | {row['learning_rate']:g} | {row['passes']:.2f} | "
                     f"{row['steps']} | {row['seconds_per_step']:.2f} | {mean_std(row['dev'])} | "
                     f"{mean_std(row['test'])} | {routing_text(row['routing'])} |")
    lines += ["", "Equal steps (MoE minus dense, seeds won): " + "; ".join(
        f"{name} {gap_text(gap)}" for name, gap in moe["equal_steps"].items()) + ".",
        f"Equal wall clock (ours-moe minus ours-long): {gap_text(moe['equal_time']['ours-moe'])}."]
    return lines + passes_lines(moe["equal_time_passes"]) + [""]


def markdown(summary: dict) -> str:
    lines = ["# ESE against its slices trained alone; MoE against dense", "",
             "The quality protocol (`bench/quality_vs_peers.py`): every contender's rate by successive halving on "
             "STS-B dev inside the extended grid, its checkpoint chosen on dev (ESE variants by the mean of their "
             "trained slices' dev scores), seeds 42, 43, 44; the test suite read once, for the full layer x dims "
             f"grid of every chosen run. Command: `{COMMAND}`.", ""]
    for start, entry in summary.items():
        if entry["ese"]:
            lines += ese_markdown(start, entry["ese"])
        if entry["moe"]:
            lines += moe_markdown(start, entry["moe"])
        lines += [f"Machines at start ({start}), each run's own record:", "",
                  *(f"- {machine}: {', '.join(runs)}" for machine, runs in entry["machines"].items()), ""]
    return "\n".join(lines)


def plot(summary: dict, path) -> None:
    """Per start, each diagonal slice's 7-task average: the twin and every variant, mean with its std as error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts = [start for start, entry in summary.items() if entry["ese"]]
    if not starts:
        return
    figure, axes = plt.subplots(1, len(starts), figsize=(6 * len(starts), 4), squeeze=False)
    for axis, start in zip(axes[0], starts):
        rows = summary[start]["ese"]["diagonal"]
        labels = [f"{row['slice'][0]} x {row['slice'][1]}" for row in rows]
        series = {"twin (trained alone)": [row["twin"] for row in rows],
                  **{ESE_VARIANTS[name]: [row["variants"][name]["test"] for row in rows] for name in ESE_VARIANTS}}
        width = 0.8 / len(series)
        for index, (label, values) in enumerate(series.items()):
            positions = [i + (index - (len(series) - 1) / 2) * width for i in range(len(rows))]
            means = [value["mean"] if value else float("nan") for value in values]
            errors = [(value["std"] or 0.0) if value else 0.0 for value in values]
            axis.bar(positions, means, width, yerr=errors, label=label, capsize=2)
        finite = [value["mean"] for values in series.values() for value in values if value]
        if finite:
            axis.set_ylim(min(finite) - 5, max(finite) + 2)
        axis.set_xticks(range(len(rows)), labels)
        axis.set(title=f"start ({start}): diagonal slices", xlabel="layers x dims", ylabel="7-task STS test avg")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report() -> None:
    summary = collect()
    if not summary:
        raise SystemExit(f"no ESE or MoE run scored on the test suite under {RUNS} yet: run `{COMMAND}`")
    (RESULTS / "ese_vs_twins.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    (RESULTS / "ese_vs_twins.md").write_text(text + "\n")
    plot(summary, RESULTS / "ese_vs_twins.png")
    print(text)

