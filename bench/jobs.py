"""What the quality benchmarks share: where results go, the start models, the training sources, the contenders and
their learning-rate grids, the objective sweep. The runners (``bench.quality_vs_peers``, ``bench.ese_vs_twins``)
and their reports import this module; neither imports a report back.

``BENCH_QUALITY_TINY=1`` shrinks the whole protocol to check it end to end in minutes (never a result): records and
models under ``outputs/quality-tiny/``, ``TINY_ROWS`` rows per source in batches of ``TINY_BATCH``, the first
``TINY_PAIRS`` pairs of STS-B dev and of every test task."""

from __future__ import annotations

import fcntl
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = os.environ.get("BENCH_QUALITY_TINY", "") == "1"
TINY_ROWS, TINY_BATCH, TINY_PAIRS = 96, 8, 100
WORK = REPO / "outputs" / ("quality-tiny" if TINY else "quality")
RESULTS = WORK / "results" if TINY else REPO / "bench" / "results"
RUNS = RESULTS / "quality_runs"
# AnglE's own venv (its pins clash with ours): bench/peers/setup_angle_venv.sh makes it; ESE_ANGLE_PYTHON overrides.
ANGLE_PYTHON = Path(os.environ.get("ESE_ANGLE_PYTHON", REPO / ".venv-angle" / "bin" / "python"))
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
BATCH = TINY_BATCH if TINY else 32  # rows (ours, triplet contenders) or pairs (pair contenders) per optimizer step
EPOCHS = 1  # passes over every source, the same for every contender
CHECKPOINTS = 8  # evenly spaced dev evaluations per run, the last at the final step
SEEDS = (42, 43, 44)  # every contender
MORE_SEEDS = (45, 46)  # ours, the best peer and any peer within CLOSE of ours on dev: 5 paired seeds
CLOSE = 0.5
SNLI = [{"source": "data/SNLI", "kind": "nli", "split": "dev"}, {"source": "data/SNLI", "kind": "nli", "split": "test"}]
IN_DOMAIN = [{"source": "data/STS/STSBenchmark/sts-train.csv", "kind": "sts", "name": "stsb-train"},
             {"source": "data/SICK/SICK_train.txt", "kind": "sts", "name": "sick-train"}]
if TINY:
    SNLI, IN_DOMAIN = ([{**source, "max_samples": TINY_ROWS} for source in group] for group in (SNLI, IN_DOMAIN))
RAW_LABELS = {"entailment": 0.0, "neutral": 0.5, "contradiction": 1.0}  # raw ids 0/1/2, normalised: same order


@contextmanager
def exclusive(name: str, folder: Path | None = None) -> Iterator[None]:
    """One process at a time holds ``name`` (a run, a shared file), so two harnesses can run side by side, one per
    core: an ``flock`` on ``<folder>/<name>.lock`` (default ``WORK/locks``), released when the holder ends, however
    it ends."""
    folder = folder or WORK / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomically(path: Path, text: str) -> None:
    """``path`` holds the old text or the new, never half of it (a record read by another process)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def offline() -> None:
    """Benchmarks run with the Hub unreachable: the start models resolve from the local cache (set by the runners'
    entry points, not on import)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class Start:
    label: str
    description: str
    sources: tuple[dict, ...]
    learning_rates: tuple[float, ...]  # the grid every contender's rate is chosen from, on STS-B dev


STARTS = {
    "a": Start("a", "all-MiniLM-L6-v2 as released", tuple(SNLI), (5e-6, 1e-5, 2e-5)),
    "b": Start("b", "all-MiniLM-L6-v2 cut to its first 3 layers", tuple(SNLI), (5e-5, 1e-4, 2e-4)),
    "c": Start("c", "all-MiniLM-L6-v2 + STS-B train and SICK train (in-domain for STS-B, SICK-R)",
               tuple(SNLI + IN_DOMAIN), (1e-5, 2e-5, 4e-5)),
    # The embedded default's job (configs/smoke.yaml's data), for choosing its objective and rate on dev.
    "s": Start("s", "all-MiniLM-L6-v2 on the embedded default's data (SNLI dev + STS-B train + SICK train)",
               (SNLI[0], *IN_DOMAIN), (1e-5, 2e-5, 4e-5)),
}


DEV_METRIC = "sts_dev_spearman"  # the full model's STS-B dev score, what every contender is chosen by
SLICES_METRIC = "sts_dev_slices_spearman"  # an ESE run's: the mean of its trained slices' dev scores


@dataclass(frozen=True)
class Contender:
    """A recipe in the comparison: ``trainer`` ``ours`` (``recipes/train_nli.py`` with ``recipe_args``), ``st``
    (sentence-transformers' trainer, ``bench/peers/st_train.py --mode st_mode``) or ``angle`` (AnglE's own
    trainer); ``unit`` is what a batch holds (rows, triplets or pairs). Ours only: ``start_slice`` (layer, dims)
    trains the start cut to that slice (``recipes/export_slice.py``; a twin of an ESE slice); ``dev_metric`` is what
    the recipe chooses its checkpoint by and halving ranks it by; ``time_of`` names the contenders whose summed
    wall clock this one is given, measured against ``time_against``'s (its passes scaled by that time ratio,
    ``bench.quality_vs_peers.passes``);
    ``sts_loss_weights`` become the ``loss_weights`` of every STS source (start c's in-domain sets); ``plan``: the
    comparison it is reported in, ``quality`` (``bench.quality_report``: ours against the peers), ``speed``
    (``bench.quality_report``: a speed option against ours on dev) or ``ese_moe`` (``bench.ese_report``: ESE against
    its twins, MoE against dense)."""

    name: str
    description: str
    trainer: str
    unit: str = "rows"
    recipe_args: tuple[str, ...] = ()
    st_mode: str = ""
    start_slice: tuple[int, int] | None = None
    dev_metric: str = DEV_METRIC
    time_of: tuple[str, ...] = ()
    time_against: str = "ours"
    sts_loss_weights: tuple[tuple[str, float], ...] = ()
    plan: str = "quality"


def twin(layer: int, dim: int) -> Contender:
    """The separately trained twin of ESE's slice ``(layer, dim)``: the start cut to its first ``layer`` layers and
    first ``dim`` dims, trained alone at that size (``--embedding_dim``)."""
    return Contender(f"twin-{layer}x{dim}", f"ours on the start cut to {layer} layer(s) x {dim} dims, trained alone",
                     "ours", recipe_args=("--embedding_dim", str(dim)), start_slice=(layer, dim), plan="ese_moe")


# The router's load-balancing loss on at the moe settings' default weight, 0.1 (Switch's 0.01 let an expert fall to a
# 3.6% share in the MoE smoke run, docs/results.md; TRL's default is 0.001), written out so the records show it.
MOE_ARGS = ("--moe.enabled", "true", "--moe.num_experts", "4", "--moe.num_experts_per_tok", "2",
            "--moe.router_learning_rate", "2e-4", "--moe.router_aux_loss_coef", "0.1")
ESPRESSO_ARGS = ("--ese.enabled", "true", "--ese.schedule", "espresso")  # its defaults: k = 128, PCA target
STARBUCKS_ARGS = ("--ese.enabled", "true", "--ese.schedule", "starbucks")  # the default diagonal, every step
SEED_OBJECTIVE = ("--cosent_w", "1", "--ibn_w", "1", "--angle_w", "1", "--hinge_w", "0", "--ibn_scale", "20",
                  "--ibn_directions", "query_to_doc", "--ibn_hardness_mode", "none", "--negative_max_score", "0")
CONTENDERS = {
    "ours": Contender("ours", "ours, the recipe's defaults", "ours"),
    "ours-111": Contender("ours-111", "ours with the seed's 1:1:1 weights (CoSENT, in-batch, AnglE)", "ours",
                          recipe_args=SEED_OBJECTIVE),
    "st-mnrl": Contender("st-mnrl", "sentence-transformers, MNRL on its NLI triplets (both anchors)", "st",
                         unit="triplets", st_mode="mnrl"),
    "st-gist": Contender("st-gist", "sentence-transformers, GISTEmbedLoss on the triplets, start model as guide",
                         "st", unit="triplets", st_mode="gist"),
    "st-combined": Contender("st-combined", "sentence-transformers, our three losses at our weights (1 : 10 : 1) "
                             "on the triplets", "st", unit="triplets", st_mode="combined"),
    "ours-both": Contender("ours-both", "ours on both-anchor rows: each entailment also anchors its premise, as in "
                           "sentence-transformers' NLI triplets", "ours", recipe_args=("--nli_anchors", "both")),
    "ours-both-ibn": Contender("ours-both-ibn", "ours-both with the added rows in the in-batch term only (each "
                               "premise-entailment pair ranked once)", "ours",
                               recipe_args=("--nli_anchors", "both_in_batch")),
    "angle": Contender("angle", "AnglE's own trainer (angle-emb 0.6.1), its NLI weights", "angle", unit="pairs"),
    "raw-labels": Contender("raw-labels", "ours with raw NLI class ids as scores (the original bug)", "ours",
                            recipe_args=("--label_map", json.dumps(RAW_LABELS))),
    "ours-moe": Contender("ours-moe", "ours on the start upcycled to 4 experts (top-2) in every layer", "ours",
                          recipe_args=MOE_ARGS, plan="ese_moe"),
    "ours-moe2": Contender("ours-moe2", "ours on the start upcycled to 4 experts (top-2) in every second layer",
                           "ours", recipe_args=(*MOE_ARGS, "--moe.layers", "every_2"), plan="ese_moe"),
    "ours-long": Contender("ours-long", "ours (dense) given ours-moe's wall clock: more passes at the same batch",
                           "ours", time_of=("ours-moe",), plan="ese_moe"),
    "ours-espresso": Contender("ours-espresso", "ours with ESE's Espresso terms (every layer, first 128 dims, PCA "
                               "target), chosen by its slices' mean dev", "ours", recipe_args=ESPRESSO_ARGS,
                               dev_metric=SLICES_METRIC, plan="ese_moe"),
    "ours-starbucks": Contender("ours-starbucks", "ours with the Starbucks schedule (the default diagonal of slices "
                                "every step), chosen by its slices' mean dev", "ours", recipe_args=STARBUCKS_ARGS,
                                dev_metric=SLICES_METRIC, plan="ese_moe"),
    **{contender.name: contender for contender in (twin(1, 128), twin(2, 256))},  # start b's diagonal
    # One Starbucks run against its diagonal trained separately, at equal training compute: the wall clock of the
    # twins and of ours together (start b's diagonal), measured against one Starbucks pass.
    "ours-starbucks-eq": Contender("ours-starbucks-eq", "ours-starbucks given the training time of its diagonal "
                                   "trained separately (the twins and ours): more passes at the same batch", "ours",
                                   recipe_args=STARBUCKS_ARGS, dev_metric=SLICES_METRIC,
                                   time_of=("ours", "twin-1x128", "twin-2x256"), time_against="ours-starbucks",
                                   plan="ese_moe"),
    # Speed options, each a default only if dev stays within noise: run at ours' rate on ours' seeds and compared with
    # ours seed by seed on dev (``bench.quality_report``'s speed section), not candidates for ours. Attention dropout 0
    # lets CPU SDPA take its fused kernel; fast dropout draws the CPU masks four to a 64-bit draw (the same
    # expectation, another random stream).
    "ours-ad0": Contender("ours-ad0", "ours without attention dropout (attention_dropout 0)", "ours",
                          recipe_args=("--attention_dropout", "0"), plan="speed"),
    "ours-fd": Contender("ours-fd", "ours with fast dropout masks (fast_dropout: true)", "ours",
                         recipe_args=("--fast_dropout", "true"), plan="speed"),
    # Start c's scored sources trained as sentence-transformers trains them (CoSENT alone), or without the in-batch
    # term only: candidates for ours' per-source default, chosen on dev.
    "ours-sts-cosent": Contender("ours-sts-cosent", "ours, its STS sources by CoSENT alone", "ours",
                                 sts_loss_weights=(("cosent_w", 1.0), ("ibn_w", 0.0), ("angle_w", 0.0))),
    "ours-sts-noibn": Contender("ours-sts-noibn", "ours, its STS sources without the in-batch term", "ours",
                                sts_loss_weights=(("ibn_w", 0.0),)),
    # Both at once, the candidate closest to sentence-transformers' own way with start c's data (st-mnrl led the
    # pair-layout comparison there): both-anchor NLI rows in the in-batch term, the STS sources by CoSENT alone.
    "ours-both-ibn-sts-cosent": Contender("ours-both-ibn-sts-cosent", "ours-both-ibn, its STS sources by CoSENT alone",
                                          "ours", recipe_args=("--nli_anchors", "both_in_batch"),
                                          sts_loss_weights=(("cosent_w", 1.0), ("ibn_w", 0.0), ("angle_w", 0.0))),
}

# Candidate objectives for ours, compared on STS-B dev only (``sweep``): recipe arguments over the seed's
# objective. Weights are cosent : ibn : angle.
SWEEP = {
    "w1-1-1": (),
    "w1-10-1": ("--ibn_w", "10"),
    "w1-30-1": ("--ibn_w", "30"),
    "w0-30-1": ("--cosent_w", "0", "--ibn_w", "30"),
    "w0-1-0": ("--cosent_w", "0", "--angle_w", "0"),
}
# Variants on top of a base weighting (``sweep --base NAME``): scale, neutral in the softmax, hardness, hinge, guide.
SWEEP_OPTIONS = {
    "scale30": ("--ibn_scale", "30"),
    "scale50": ("--ibn_scale", "50"),
    "neutral-neg": ("--negative_max_score", "0.5"),
    "hardneg5": ("--ibn_hardness_mode", "hard_negatives", "--ibn_hardness_strength", "5"),
    "hinge": ("--hinge_w", "1"),
    "guide": ("--guide_model", "start"),
    "q2q": ("--ibn_directions", "query_to_doc", "query_to_query"),
    # The positive as a query against every anchor too: sentence-transformers' NLI triplets take both anchors
    # ((a, p, n) and (p, a, n)), which st-combined trains on at (b).
    "d2q": ("--ibn_directions", "query_to_doc", "doc_to_query"),
    "d2q-q2q": ("--ibn_directions", "query_to_doc", "doc_to_query", "query_to_query"),
    "ad0": ("--attention_dropout", "0"),
    # ESE's candidates (``sweep --contender ours-starbucks|ours-espresso``, chosen by the slices' mean dev): the
    # slices' similarities distilled from the full model's (detached), slice weights by layer or the small slices
    # weighted up, the grid ladder, each slice distilled toward its layer's PCA target; Espresso's layer weighting.
    "sb-sim1": ("--ese.starbucks_similarity_weight", "1"),
    "sb-linear": ("--ese.starbucks_weights", "linear"),
    "sb-depth": ("--ese.starbucks_weights", "depth"),
    "sb-small2": ("--ese.starbucks_weights", "2", "1.5"),  # start b's two smaller slices weighted up, 1 for the full
    "sb-grid": ("--ese.starbucks_ladder", "grid"),
    "sb-distill": ("--ese.starbucks_distill_weight", "1"),
    "es-uniform": ("--ese.layer_weighting", "uniform"),
    "es-linear": ("--ese.layer_weighting", "linear"),
}


def export_once(model: str, layer: int, dim: int, folder: Path) -> str:
    """``model`` cut to ``layer`` layers and ``dim`` dims by the recipe users would run, exported once."""
    if not (folder / "config.json").is_file():
        subprocess.run([sys.executable, "recipes/export_slice.py", "--model_name_or_path", model, "--layer",
                        str(layer), "--dim", str(dim), "--output_dir", str(folder)], cwd=REPO, check=True)
    return str(folder)


def start_model(start: str, start_slice: tuple[int, int] | None = None) -> str:
    """The start model's folder (start ``b`` is exported once), or with ``start_slice`` (layer, dims) that slice of
    it, exported once under ``starts/``."""
    from ese_trainer.hub_models import resolve_model_path

    model = resolve_model_path(MINILM) if start != "b" else export_once(MINILM, 3, 384, WORK / "starts" / "minilm-l3")
    if start_slice is None:
        return model
    layer, dim = start_slice
    return export_once(model, layer, dim, WORK / "starts" / f"{start}-{layer}x{dim}")


@dataclass
class RunRecord:
    """One training run's record: what ran and what dev chose (``test`` is added by ``score``)."""

    start: str
    contender: str
    learning_rate: float
    seed: int
    variant: str = ""
    arguments: list[str] = field(default_factory=list)
    steps: int = 0
    texts_per_step: float = 0.0
    dev_by_step: dict = field(default_factory=dict)
    selected_step: int = 0
    selected_dev: float = 0.0
    train_seconds: float = 0.0
    machine: str = ""
    test: dict = field(default_factory=dict)
    steps_run: int | None = None  # below ``steps`` when successive halving stopped the run
    stopped_at: int | None = None
    keep_at_least: float | None = None  # the dev score the run had to reach at half its pass
    dev_metric: str = DEV_METRIC  # what ``dev_by_step`` holds
    full_dev_by_step: dict | None = None  # the full model's dev, when ``dev_metric`` is another
    passes: float = EPOCHS  # passes over every source


# Successive halving over learning rates (one round), shared by the runner and the report.
def half_dev(record: dict) -> float:
    """A run's best dev score up to half its pass (successive halving's ranking): its first ``CHECKPOINTS // 2``
    evaluations, which every run makes at the same fractions of its planned pass (a cut run stops after them)."""
    steps = sorted(record["dev_by_step"], key=int)[:CHECKPOINTS // 2]
    return max(record["dev_by_step"][step] for step in steps)


def halving_choice(records: dict[float, dict]) -> float:
    """Successive halving's pick: of the two best rates at half the pass, the one whose run chose the higher dev."""
    finalists = sorted(records, key=lambda lr: -half_dev(records[lr]))[:2]
    return max(finalists, key=lambda lr: records[lr]["selected_dev"])


def second_best_half(records: dict[float, dict]) -> float | None:
    """The bar a new candidate must reach at half the pass: the second best so far (none before two have run)."""
    halves = sorted((half_dev(record) for record in records.values()), reverse=True)
    return halves[1] if len(halves) >= 2 else None


def ours_candidates() -> list[str]:
    """Our recipe's variants in the quality comparison (trainer ``ours``, plan ``quality``; the raw-labels bug row
    is not a candidate): the defaults, the seed's 1:1:1 weights, both-anchor rows and (start c) the STS sources' own
    weightings. Ours is whichever of those that ran dev prefers (:func:`ours_on_dev`)."""
    return [name for name, contender in CONTENDERS.items()
            if contender.trainer == "ours" and contender.plan == "quality" and name != "raw-labels"]


def quality_peers(names: list[str]) -> list[str]:
    """The peers among ``names``: the quality plan's contenders that are neither ours' candidates nor the raw-labels
    row."""
    candidates = ours_candidates()
    return [name for name in names if CONTENDERS[name].plan == "quality" and name != "raw-labels"
            and name not in candidates]


def candidate_dev_means(dev_by_seed: dict[str, dict[int, float]]) -> dict[str, float]:
    """Each candidate of ours (:func:`ours_candidates`) that ran every seed of ``SEEDS``: its mean chosen-dev score
    over them."""
    candidates = ours_candidates()
    return {name: statistics.mean(runs[seed] for seed in SEEDS) for name, runs in dev_by_seed.items()
            if name in candidates and all(seed in runs for seed in SEEDS)}


def ours_on_dev(dev_by_seed: dict[str, dict[int, float]]) -> str | None:
    """The candidate of ours with the highest mean chosen-dev score over ``SEEDS`` (:func:`candidate_dev_means`; a
    tie goes to the defaults); None while none has run them all."""
    means = candidate_dev_means(dev_by_seed)
    return max(means, key=lambda name: (means[name], name == "ours"), default=None)


def machines_of(records: list[dict]) -> dict[str, list[str]]:
    """Each run's own machine, as its record stamps it: machine -> ``"<contender> <seed>"`` of the runs it made."""
    machines: dict[str, list[str]] = {}
    for record in records:
        machines.setdefault(record["machine"], []).append(f"{record['contender']} {record['seed']}")
    return machines


def ese_diagonal(start: str) -> list[tuple[int, int]]:
    """The start's default Starbucks diagonal of (layer, dims) slices, small to large, the full model last."""
    from ese_trainer.ese.starbucks import default_diagonal

    return default_diagonal(3 if start == "b" else 6, 384)
