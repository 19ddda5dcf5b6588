"""The README's quick start, timed: ``make smoke`` and ``make test`` as written, and the STS table ``make smoke``
prints, recorded with the machine.

    python3 bench/smoke_record.py            # in a fresh clone: both commands, the set-up included in the first
    python3 bench/smoke_record.py smoke      # ``make smoke`` alone (its table and time; no test count)
    .venv/bin/python bench/smoke_record.py versus 07ccf66 --rounds 2   # its recipe here against another revision's

Writes ``bench/results/smoke.{json,md}``; ``versus`` writes ``smoke_versus.{json,md}``: ``make smoke``'s recipe
command (the set-up is the same commands in both) run by this checkout and by ``REV`` checked out beside it, with
this set-up's packages, alternating, on a quiet machine. Standard library only, so that it runs before the set-up
exists.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script, before the set-up: bench.machine needs only the standard library
from bench.machine import cpu_name  # noqa: E402

RESULTS = REPO / "bench" / "results"
COMMANDS = (("make", "smoke"), ("make", "test"))
RECIPE_STARTS = "accelerate launch"  # make echoes the recipe's command when the set-up is done: the split point


def machine() -> str:
    """The CPU model and core count, Python version and platform."""
    return f"{cpu_name()}, {os.cpu_count()} cores; Python {platform.python_version()}, {platform.system()}"


def timed(command: tuple[str, ...]) -> tuple[float, float | None, str]:
    """Run ``command`` in the repository, its output shown as it comes; the wall time, the seconds until the recipe
    started (the set-up's share; ``None`` where no recipe ran) and the output."""
    started, lines, set_up = time.perf_counter(), [], None
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            sys.stdout.write(line)
            lines.append(line)
            if set_up is None and RECIPE_STARTS in line:
                set_up = time.perf_counter() - started
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed with exit code {process.returncode}")
    return time.perf_counter() - started, set_up, "".join(lines)


def sts_table(output: str) -> tuple[list[str], dict[str, list[float]], str]:
    """The STS table ``make smoke`` ends with (header, before/after rows) and its best-checkpoint line."""
    header = next(line for line in output.splitlines() if line.startswith("| model |"))
    columns = [cell.strip() for cell in header.strip("|").split("|")][1:]
    rows = {}
    for line in output.splitlines():
        match = re.match(r"\| (before|after) \|(.*)\|$", line.strip())
        if match:
            rows[match.group(1)] = [float(cell) for cell in match.group(2).split("|")]
    best = next(line for line in output.splitlines() if line.startswith("best checkpoint by STS-B dev"))
    return columns, rows, best


def smoke_recipe() -> list[str]:
    """The recipe command ``make smoke`` runs once the set-up is done (read from the Makefile), with this set-up's
    executables."""
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^smoke:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE).group(1)
    words = " ".join(line.strip().rstrip("\\") for line in recipe.splitlines()).split()
    return [str(REPO / ".venv" / "bin" / word.removeprefix("$(BIN)/")) if word.startswith("$(BIN)/") else word
            for word in words if "=" not in word]


def versus(revision: str, rounds: int) -> None:
    """``make smoke``'s recipe by this checkout and by ``revision``, alternating (see the module's docstring)."""
    command, env = smoke_recipe(), {**os.environ, "HF_HUB_OFFLINE": "1"}
    label = subprocess.run(["git", "rev-parse", "--short", revision], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as folder:
        other = Path(folder) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(other), revision], cwd=REPO, check=True)
        try:
            trees = {label: other, f"{head} (this checkout)": REPO}
            for tree in trees.values():  # each revision's own package, not the set-up's editable install
                found = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c",
                                        "import ese_trainer; print(ese_trainer.__file__)"], capture_output=True,
                                       text=True, env={**env, "PYTHONPATH": str(tree)}, cwd=tree, check=True)
                if not Path(found.stdout.strip()).is_relative_to(tree):
                    raise SystemExit(f"{tree}: ese_trainer is imported from {found.stdout.strip()}, not the tree")
            runs: dict[str, list[float]] = {name: [] for name in trees}
            tables: dict[str, dict] = {}
            for round_index in range(rounds):
                for name, tree in trees.items():  # alternating: the other revision first in every round
                    print(f"== round {round_index + 1}/{rounds}: {name}", flush=True)
                    started = time.perf_counter()
                    with tempfile.TemporaryDirectory() as output_dir:
                        result = subprocess.run([*command, "--output_dir", output_dir], cwd=tree, text=True,
                                                env={**env, "PYTHONPATH": str(tree)}, capture_output=True)
                    runs[name].append(round(time.perf_counter() - started, 1))
                    if result.returncode:
                        raise SystemExit(f"{name}: the recipe failed\n{result.stderr[-3000:]}")
                    columns, rows, best = sts_table(result.stdout)
                    tables[name] = {"columns": columns, "sts": rows, "best_checkpoint": best}
                    print(f"   {runs[name][-1]:.1f} s; after: {rows['after'][-1]:.2f}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=REPO, check=False)
    old, new = runs.values()
    ratios = [before / after for before, after in zip(old, new)]
    record = {"command": f".venv/bin/python bench/smoke_record.py versus {revision} --rounds {rounds}",
              "recipe": " ".join(command), "machine": machine(), "seconds": runs, "ratios": ratios, "tables": tables}
    (RESULTS / "smoke_versus.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# `make smoke`'s recipe: this checkout against {revision} (`{record['command']}`)", "",
             f"Machine: {record['machine']}. The recipe command (`{record['recipe']}`, each run into a new output "
             "folder) with one set-up's packages, each revision's own code, alternating, the other revision first.",
             "", "| revision | runs (s) | STS avg after | best checkpoint |", "|---|---|---|---|"]
    lines += [f"| {name} | {', '.join(f'{value:.1f}' for value in values)} | "
              f"{tables[name]['sts']['after'][-1]:.2f} | {tables[name]['best_checkpoint']} |"
              for name, values in runs.items()]
    verdict = ("faster in every round" if min(ratios) > 1 else "slower in every round" if max(ratios) < 1
               else "mixed")
    lines += ["", f"{label}'s time over this checkout's, round by round: "
              + ", ".join(f"{ratio:.2f}x" for ratio in ratios) + f" (this checkout {verdict}).", ""]
    (RESULTS / "smoke_versus.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    if sys.argv[1:2] == ["versus"]:
        parser = argparse.ArgumentParser(description="make smoke's recipe against another revision's")
        parser.add_argument("revision")
        parser.add_argument("--rounds", type=int, default=2)
        options = parser.parse_args(sys.argv[2:])
        return versus(options.revision, options.rounds)
    fresh = not (REPO / ".venv").exists()  # the set-up is part of the first command's time
    chosen = sys.argv[1:] or [target for _, target in COMMANDS]
    unknown = sorted(set(chosen) - {target for _, target in COMMANDS})
    if unknown:
        raise SystemExit(f"unknown command(s) {unknown}: choose from smoke, test")
    seconds, outputs, set_up = {}, {}, None
    for command in (command for command in COMMANDS if command[1] in chosen):
        name = " ".join(command)
        seconds[name], split, outputs[name] = timed(command)
        set_up = split if command[1] == "smoke" else set_up
    columns, rows, best = sts_table(outputs["make smoke"])
    tests = re.findall(r"=+ (\d+ passed.*?) in ", outputs.get("make test", ""))
    record = {"commands": list(seconds), "seconds": {key: round(value, 1) for key, value in seconds.items()},
              "machine": machine(), "columns": columns, "sts": rows, "best_checkpoint": best,
              "tests": tests[-1] if tests else None,
              "set_up_included": fresh, "smoke_set_up_seconds": None if set_up is None else round(set_up, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "smoke.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# The quick start, timed (`python3 bench/smoke_record.py`)", "", f"Machine: {record['machine']}.", "",
             "| command | wall time |", "|---|---|"]
    lines += [f"| `{command}` | {value / 60:.1f} min |" for command, value in seconds.items()]
    lines += ["", "Set-up (a new `.venv`) included in `make smoke`'s time" if fresh else "`.venv` already existed"]
    lines[-1] += "." if set_up is None else (f": {set_up / 60:.1f} min of set-up before the recipe started, "
                                             f"{(seconds['make smoke'] - set_up) / 60:.1f} min of recipe.")
    lines += ["", f"`make test`: {record['tests'] or 'not run in this record'}.", "",
              "STS (cosine Spearman x100) printed by `make smoke`:", "",
              "| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{value:.2f}" for value in values) + " |" for name, values in rows.items()]
    lines += ["", best, ""]
    (RESULTS / "smoke.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
