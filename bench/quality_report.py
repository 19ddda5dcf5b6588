"""The quality comparison's tables and plot, from the run records of ``bench/quality_vs_peers.py``.

    python -m bench.quality_vs_peers report

Per start: the start model's row, then each contender at its own learning rate (chosen on STS-B dev from the start's
grid): seeds, steps, texts per step, the dev score of the checkpoints chosen and the test suite (mean ± standard
deviation over seeds); the differences to ours over paired seeds; how dev ranked the contenders against how test
did. The objective sweep (dev only) goes to its own table. Writes ``bench/results/quality_vs_peers.{json,md,png}``
and ``bench/results/objective_sweep.md``.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from bench.jobs import (
    CONTENDERS,
    RESULTS,
    RUNS,
    SEEDS,
    STARTS,
    candidate_dev_means,
    halving_choice,
    machines_of,
    ours_on_dev,
)

TASKS = ("STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness", "avg")
HEADERS = ("STS12", "STS13", "STS14", "STS15", "STS16", "STS-B", "SICK-R", "avg")


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def collect() -> dict:
    """``{start: {"start_model", "contenders": {name: {"tuning", "records"}}, "other_plans": {...}, "sweep": [...]}}``:
    ``contenders`` are ours and the peers (``plan`` ``quality``), ``other_plans`` the ESE and MoE plans' contenders
    (``bench.ese_report`` compares those), kept for their sweeps' "as tuned" rows."""
    summary = {}
    for start in STARTS:
        folder = RUNS / start
        tuned_file = folder / "tuned.json"
        sweep = [json.loads(path.read_text()) for path in sorted((folder / "sweep").glob("*.json"))]
        if not tuned_file.is_file() and not sweep:
            continue
        tuned = json.loads(tuned_file.read_text()) if tuned_file.is_file() else {}
        contenders, elsewhere = {}, {}  # ours and the peers; the ESE and MoE plans' (their sweeps' "as tuned")
        for name in CONTENDERS:
            if name not in tuned:
                continue
            lr = tuned[name]["learning_rate"]
            records = [json.loads(path.read_text()) for path in sorted(folder.glob(f"{name}_lr{lr:g}_seed*.json"))]
            if records:
                plan = contenders if CONTENDERS[name].plan == "quality" else elsewhere
                plan[name] = {"tuning": tuned[name], "records": records}
        start_file = folder / "start_model.json"
        summary[start] = {"start_model": json.loads(start_file.read_text()) if start_file.is_file() else None,
                          "contenders": contenders, "other_plans": elsewhere, "sweep": sweep,
                          "ours": ours_on_dev(dev_by_seed(contenders)) or "ours"}
    return summary


def dev_by_seed(contenders: dict) -> dict[str, dict[int, float]]:
    """Each contender's chosen-dev score by seed, over its whole-pass runs at its chosen rate."""
    return {name: {record["seed"]: record["selected_dev"] for record in item["records"]
                   if not record.get("stopped_at")} for name, item in contenders.items()}


def paired_differences(entry: dict) -> dict[str, dict]:
    """Per contender, ours (the candidate dev chose, ``entry["ours"]``) minus it on the 7-task test average, seed by
    seed (the seeds both ran): mean, standard deviation, the paired t statistic (mean / (std / sqrt(n))) and the
    seeds ours wins."""
    reference = entry["ours"]
    ours = {record["seed"]: record["test"] for record in entry["contenders"].get(reference, {}).get(
        "records", []) if record["test"]}
    differences = {}
    for name, item in entry["contenders"].items():
        if name == reference:
            continue
        theirs = {record["seed"]: record["test"] for record in item["records"] if record["test"]}
        seeds = sorted(set(ours) & set(theirs))
        if seeds:
            values = [ours[seed]["avg"] - theirs[seed]["avg"] for seed in seeds]
            std = statistics.stdev(values) if len(values) > 1 else None
            differences[name] = {"seeds": seeds, "mean": statistics.mean(values), "std": std,
                                 "t": statistics.mean(values) / (std / math.sqrt(len(values))) if std else None,
                                 "ours_wins": sum(value > 0 for value in values),
                                 "by_task": {task: statistics.mean(ours[seed][task] - theirs[seed][task]
                                                                   for seed in seeds) for task in TASKS}}
    return differences


def difference_line(name: str, difference: dict, reference: str) -> str:
    spread = f" ± {difference['std']:.2f}" if difference["std"] is not None else ""
    t = f", t = {difference['t']:.2f}" if difference["t"] is not None else ""
    return (f"- {name}: {difference['mean']:+.2f}{spread}{t}; {reference} ahead on {difference['ours_wins']} of "
            f"{len(difference['seeds'])} seeds ({', '.join(map(str, difference['seeds']))})")


def steps_ran(record: dict) -> int:
    """The steps a run made: its last dev evaluation is at its last step."""
    return max(int(step) for step in record["dev_by_step"])


def rate_at_edge(tuning: dict) -> bool:
    """The chosen rate is the lowest or highest candidate: its grid does not bracket it (the protocol extends a
    grid until it does; a contender tuned before that rule, or not yet extended, is marked)."""
    rates = [float(lr) for lr in tuning["candidates"]]
    return len(rates) > 1 and tuning["learning_rate"] in (min(rates), max(rates))


def candidates_cell(tuning: dict) -> str:
    """Each candidate rate's dev; a run that successive halving stopped is marked with the step it stopped at."""
    cells = []
    for lr, value in tuning["candidates"].items():
        if isinstance(value, dict):
            stop = f", stopped at {value['stopped_at']}" if value.get("stopped_at") else ""
            cells.append(f"{lr}: {value['dev']:.2f}{stop}")
        else:
            cells.append(f"{lr}: {value:.2f}")
    return ", ".join(cells) or tuning["chosen_on"]


def halving_check(start: str) -> list[str]:
    """Would successive halving pick the same rate as the full grid? Replayed from the dev scores by step of every
    seed-42 grid of the start that ran in full (at least 3 rates), the archived ones included."""
    grids: dict[str, dict[float, dict]] = {}
    folders = [RUNS / start, *sorted((RESULTS / "archive").glob(f"quality_runs_{start}_*"))]
    for folder in folders:
        for path in sorted(folder.glob("*_seed42.json")):
            record = json.loads(path.read_text())
            where = "" if folder.parent == RUNS else f" ({folder.name})"
            grids.setdefault(record["contender"] + where, {})[record["learning_rate"]] = record
    lines = []
    for name, records in grids.items():
        if len(records) >= 3 and not any(record.get("stopped_at") for record in records.values()):
            full = max(records, key=lambda lr: records[lr]["selected_dev"])
            halved = halving_choice(records)
            lines.append(f"- {name}: full grid {full:g}, successive halving {halved:g}"
                         + (" (same)" if full == halved else " (differs)"))
    return lines


def rankings(entry: dict) -> tuple[list[str], list[str]]:
    """Contenders ordered by their mean chosen-dev score and by their mean test average (scored ones only)."""
    scored = {name: item for name, item in entry["contenders"].items()
              if item["records"] and all(record["test"] for record in item["records"])}
    by_dev = sorted(scored, key=lambda name: -statistics.mean(r["selected_dev"] for r in scored[name]["records"]))
    by_test = sorted(scored, key=lambda name: -statistics.mean(r["test"]["avg"] for r in scored[name]["records"]))
    return by_dev, by_test


def ours_choice_line(entry: dict) -> str:
    """Which of ours' candidates dev chose, and every candidate's mean dev over the seeds they all run."""
    means = candidate_dev_means(dev_by_seed(entry["contenders"]))
    listed = ", ".join(f"{name} {mean:.2f}" for name, mean in sorted(means.items(), key=lambda item: -item[1]))
    return (f"Ours is **{entry['ours']}**: of our recipe's candidates, the one with the best mean chosen dev over "
            f"seeds {', '.join(map(str, SEEDS))} ({listed or 'none has run them all yet'}); test sets play no part.")


def start_section(start: str, entry: dict) -> list[str]:
    lines = [f"## Start ({start}): {STARTS[start].description}", "",
             f"Learning-rate grid: {', '.join(f'{lr:g}' for lr in STARTS[start].learning_rates)}, extended (x2, /2) "
             "until each contender's chosen rate has a lower dev score on both sides; successive halving: at half the "
             "pass, candidates outside the top two on dev stop; of the two, the higher chosen dev wins (seed 42).", "",
             "| contender | lr (dev of each candidate) | seeds | steps | texts/step | dev (chosen) | "
             + " | ".join(HEADERS) + " |", "|---" * (len(HEADERS) + 6) + "|"]
    model = entry["start_model"]
    if model:
        lines.append(f"| start model | – | – | – | – | {model['dev']:.2f} | "
                     + " | ".join(f"{model[task]:.2f}" for task in TASKS) + " |")
    for name, item in entry["contenders"].items():
        records = item["records"]
        scored = [record for record in records if record["test"]]
        tests = " | ".join(cell([r["test"][task] for r in scored]) if scored else "–" for task in TASKS)
        ran = sorted({steps_ran(record) for record in records})
        edge = " **at the grid's edge**" if rate_at_edge(item["tuning"]) else ""
        lines.append(f"| {name} | {item['tuning']['learning_rate']:g}{edge} ({candidates_cell(item['tuning'])}) | "
                     f"{len(records)} | {'/'.join(map(str, ran))} | {records[0]['texts_per_step']:.0f} | "
                     f"{cell([r['selected_dev'] for r in records])} | {tests} |")
    lines += ["", ours_choice_line(entry)]
    differences = paired_differences(entry)
    if differences:
        lines += ["", f"{entry['ours']} minus each contender, 7-task test average over paired seeds:", ""]
        lines += [difference_line(name, difference, entry["ours"]) for name, difference in differences.items()]
        lines += ["", "Per task, the mean of the same paired differences:", "",
                  "| minus | " + " | ".join(HEADERS) + " |", "|---" * (len(HEADERS) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(f"{difference['by_task'][task]:+.2f}" for task in TASKS) + " |"
                  for name, difference in differences.items()]
    by_dev, by_test = rankings(entry)
    if by_dev:
        lines += ["", "| rank | by dev (mean of chosen checkpoints) | by test (7-task avg) |", "|---|---|---|"]
        lines += [f"| {rank} | {dev} | {test} |" for rank, (dev, test) in enumerate(zip(by_dev, by_test), start=1)]
    check = halving_check(start)
    if check:
        lines += ["", "Successive halving replayed on every grid that ran in full (seed 42):", "", *check]
    lines += ["", "Machines (each run's own record):", ""]
    everything = [record for item in entry["contenders"].values() for record in item["records"]]
    lines += [f"- {machine}: {', '.join(runs)}" for machine, runs in machines_of(everything).items()]
    return [*lines, ""]


def speed_section(start: str, entry: dict) -> list[str]:
    """Each speed option (plan ``speed``) against ours (the defaults) at ours' rate, seed by seed on chosen dev: it
    may become a default only within noise, a mean difference no lower than minus ours' seed-to-seed deviation."""
    ours = dev_by_seed(entry["contenders"]).get("ours", {})
    options = {name: item for name, item in entry["other_plans"].items() if CONTENDERS[name].plan == "speed"}
    rows = []
    for name, runs in dev_by_seed(options).items():
        seeds = sorted(set(ours) & set(runs))
        if len(seeds) < 2:
            continue
        values = [runs[seed] - ours[seed] for seed in seeds]
        mean, std, noise = statistics.mean(values), statistics.stdev(values), statistics.stdev(ours[s] for s in seeds)
        verdict = "within noise" if mean >= -noise else "**below noise**"
        rows.append(f"| {name} | {', '.join(map(str, seeds))} | {cell([ours[s] for s in seeds])} | "
                    f"{cell([runs[s] for s in seeds])} | {mean:+.2f} ± {std:.2f} | {sum(v > 0 for v in values)} of "
                    f"{len(seeds)} | {verdict} |")
    if not rows:
        return []
    return [f"### Start ({start}): speed options on dev", "",
            "At ours' rate on ours' seeds (`python -m bench.quality_vs_peers seeds --start S --seeds 42 43 44 "
            "--contenders ours-fd ours-ad0 --rate_of ours`); dev only, the test sets are not read. Within noise: the "
            "mean paired difference is no lower than minus ours' seed-to-seed standard deviation.", "",
            "| option | seeds | ours dev | its dev | it minus ours | seeds it leads | verdict |",
            "|---|---|---|---|---|---|---|", *rows, ""]


def sweep_markdown(summary: dict) -> str:
    lines = ["# Ours: candidate objectives on STS-B dev", "",
             "Every variant: `recipes/train_nli.py` on the start's job (`bench/quality_vs_peers.py`), seed 42. "
             "`ours-111`: the seed's objective (CoSENT 1, in-batch 1, AnglE 1, scale 20) plus the arguments shown, at "
             "the rate shown (by default the middle of the start's grid). An ESE contender: its own arguments plus "
             "those shown, at its chosen rate, beside its tuning run at that rate (\"as tuned\"), scored by its "
             "slices' mean dev. Dev only: the test sets are not read for these runs. Command: `python -m "
             "bench.quality_vs_peers sweep --start S [--contender NAME] [--base NAME] [--lr LR] [--names ...]`.", ""]
    for start, entry in summary.items():
        by_contender: dict[str, list[dict]] = {}
        for record in entry["sweep"]:
            by_contender.setdefault(record["contender"].split("+")[0], []).append(record)
        for name, records in by_contender.items():
            tuned = entry["contenders"].get(name) or entry["other_plans"].get(name)
            if tuned:  # the contender as tuned, at the sweep's rate and seed
                records += [{**record, "variant": "(as tuned)"} for record in tuned["records"]
                            if (record["learning_rate"], record["seed"]) == (records[0]["learning_rate"],
                                                                             records[0]["seed"])]
            metric = records[0].get("dev_metric", "sts_dev_spearman")
            lines += [f"## Start ({start}), {name} (dev: `{metric}`)", "",
                      "| variant | arguments | lr | dev (chosen) | chosen step / steps |", "|---|---|---|---|---|"]
            for record in sorted(records, key=lambda r: -r["selected_dev"]):
                arguments = " ".join(record["arguments"][len(CONTENDERS[name].recipe_args):])
                lines.append(f"| {record['variant']} | `{arguments or '(its own)'}` | {record['learning_rate']:g} "
                             f"| {record['selected_dev']:.2f} | {record['selected_step']} / {record['steps']} |")
            lines.append("")
    return "\n".join(lines)


def markdown(summary: dict) -> str:
    lines = ["# Quality against the recipes people would otherwise use", "",
             "Cosine Spearman x100 on the test sets (STS12–16 SentEval \"all\", STS-B, SICK-R), our evaluator, mean "
             "pooling; mean ± standard deviation over seeds. Every contender: the same start, one pass over each "
             "training source, batches of 32 of its unit (a row: a premise with its hypotheses, or a triplet; or a "
             "pair), linear schedule with 10% warmup, AdamW, weight decay 0.01, the same seeds, its own learning "
             "rate chosen on STS-B dev; the checkpoint with the best STS-B **dev** score is the one scored. Commands: "
             "`python -m bench.quality_vs_peers protocol --start S --contenders ...` (or `tune|seeds|score`) then "
             "`python -m bench.quality_vs_peers report`. Each run's machine is listed under its start.", ""]
    for start, entry in summary.items():
        if entry["contenders"]:
            lines += start_section(start, entry) + speed_section(start, entry)
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {start: entry for start, entry in summary.items()
             if any(r["test"] for item in entry["contenders"].values() for r in item["records"])}
    if not shown:
        return
    figure, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 4), squeeze=False)
    for axis, (start, entry) in zip(axes[0], shown.items()):
        names = [name for name, item in entry["contenders"].items() if any(r["test"] for r in item["records"])]
        values = [[r["test"]["avg"] for r in entry["contenders"][name]["records"] if r["test"]] for name in names]
        means = [statistics.mean(v) for v in values]
        errors = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        axis.bar(names, means, yerr=errors, color=["tab:red" if n == entry["ours"] else "tab:blue" for n in names],
                 capsize=3)
        base = entry["start_model"]["avg"] if entry["start_model"] else min(means)
        axis.axhline(base, color="grey", linestyle="--", label="start model")
        axis.set_ylim(min(means + [base]) - 3, max(means + [base]) + 1.5)
        axis.set(title=f"start ({start})", ylabel="7-task STS avg (Spearman x100)")
        axis.tick_params(axis="x", rotation=40)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report() -> None:
    summary = collect()
    if not summary:
        raise SystemExit("no runs yet: run `python -m bench.quality_vs_peers sweep|tune ...` first")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality_vs_peers.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    (RESULTS / "quality_vs_peers.md").write_text(text + "\n")
    (RESULTS / "objective_sweep.md").write_text(sweep_markdown(summary) + "\n")
    plot(summary, RESULTS / "quality_vs_peers.png")
    print(text)
