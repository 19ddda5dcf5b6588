"""What the quality and ESE benchmarks share: where results go, the start models, the training sources, the
contenders. The runners (``bench.quality_vs_peers``, ``bench.ese_schedules``) and their reports import this module;
neither imports the other's report back."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
RUNS = RESULTS / "quality_runs"
WORK = REPO / "outputs" / "quality"
# AnglE's own venv (its pins clash with ours): bench/peers/setup_angle_venv.sh makes it; ESE_ANGLE_PYTHON overrides.
ANGLE_PYTHON = Path(os.environ.get("ESE_ANGLE_PYTHON", REPO / ".venv-angle" / "bin" / "python"))
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
BATCH = 32
CHECKPOINTS = 8  # evenly spaced checkpoints per run, the last at the final step
SNLI = [{"source": "data/SNLI", "kind": "nli", "split": "dev"}, {"source": "data/SNLI", "kind": "nli", "split": "test"}]
IN_DOMAIN = [{"source": "data/STS/STSBenchmark/sts-train.csv", "kind": "sts", "name": "stsb-train"},
             {"source": "data/SICK/SICK_train.txt", "kind": "sts", "name": "sick-train"}]
RAW_LABELS = {"entailment": 0.0, "neutral": 0.5, "contradiction": 1.0}  # raw ids 0/1/2: same order, see docstring
CONTENDERS = ("ours", "ours-hardneg", "st-combined", "st-mnrl", "angle", "raw-labels")


@dataclass(frozen=True)
class Start:
    label: str
    description: str
    sources: tuple[dict, ...]


STARTS = {
    "a": Start("a", "all-MiniLM-L6-v2 as released", tuple(SNLI)),
    "b": Start("b", "all-MiniLM-L6-v2 cut to its first 3 layers", tuple(SNLI)),
    "c": Start("c", "all-MiniLM-L6-v2 + STS-B train and SICK train (in-domain for STS-B, SICK-R)",
               tuple(SNLI + IN_DOMAIN)),
}


def start_model(start: str) -> str:
    """The start model's folder (start ``b`` is exported once, by the recipe users would run)."""
    from ese_trainer.hub_models import resolve_model_path

    if start != "b":
        return resolve_model_path(MINILM)
    folder = WORK / "starts" / "minilm-l3"
    if not (folder / "config.json").is_file():
        subprocess.run([sys.executable, "recipes/export_slice.py", "--model_name_or_path", MINILM, "--layer", "3",
                        "--dim", "384", "--output_dir", str(folder)], cwd=REPO, check=True)
    return str(folder)


# The ESE schedule comparison (bench.ese_schedules): its variants and the diagonal of (layer, dims) slices.
ESE_RUNS = RESULTS / "ese_runs"
ESE_VARIANTS = {
    "no-ese": [],
    "espresso-pca": ["--ese.enabled", "true", "--ese.compression_target", "pca"],
    "espresso-moe": ["--ese.enabled", "true", "--ese.compression_target", "moe"],
    "starbucks": ["--ese.enabled", "true", "--ese.schedule", "starbucks"],
}


def ese_diagonal(start: str) -> list[tuple[int, int]]:
    from ese_trainer.ese.starbucks import default_diagonal

    return default_diagonal(3 if start == "b" else 6, 384)
