"""Training sources: NLI pairs, scored STS pairs and NLI triplets, several in one run.

Every source becomes pairs ``(sentence1, sentence2, score ∈ [0, 1])`` plus two columns the batch sampler uses:
``source`` (its index: each batch comes from one source) and ``group`` (pairs that belong together — an NLI
premise's hypotheses, a triplet's two pairs — so that hard negatives can share a batch).

- ``nli``: labels through the label map; unlabelled, unknown-label and empty rows dropped and counted.
- ``sts``: gold scores in ``score_range`` (default [0, 5]) normalised like evaluation data; a NaN, non-numeric or
  out-of-range score is an error naming the file and row.
- ``triplet``: ``(anchor, positive, negative)`` rows (all-nli's ``triplet`` layout) become the pairs
  ``(anchor, positive, 1.0)`` and ``(anchor, negative, 0.0)`` of one group.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from datasets import Dataset, concatenate_datasets, load_dataset

from ese_trainer.data.errors import DataError
from ese_trainer.data.files import normalise_text, read_table, require_columns
from ese_trainer.data.nli import DEFAULT_LABEL_MAP, load_nli_pairs, validate_label_map
from ese_trainer.data.sts import DEFAULT_SCORE_RANGE, load_sts_pairs
from ese_trainer.paths import looks_like_local_path

SOURCE_KINDS = ("nli", "sts", "triplet")
TRIPLET_COLUMNS = ("anchor", "positive", "negative")


@dataclass(frozen=True)
class TrainSource:
    """One entry of ``train_datasets``.

    ``source``: Hub id, file or folder; ``kind``: nli, sts or triplet; ``split``/``subset``: of a Hub dataset (or the
    SentEval file suffix); ``max_samples``: a seeded random subset; ``weight``: how many times its rows are drawn
    per epoch (1 = each once); ``label_map`` (nli; default the run's); ``score_range`` (sts; default [0, 5]);
    ``name`` (default: the source).
    """

    source: str
    kind: str = "nli"
    split: str = "train"
    subset: str | None = None
    max_samples: int | None = None
    weight: float = 1.0
    label_map: dict | None = None
    score_range: tuple[float, float] = DEFAULT_SCORE_RANGE
    name: str | None = None

    @classmethod
    def parse(cls, entry: dict | str, index: int) -> TrainSource:
        """An entry of the YAML list (a mapping, or its JSON text from the command line); errors name the entry."""
        where = f"train_datasets[{index}]"
        if isinstance(entry, str):
            try:
                entry = json.loads(entry)
            except json.JSONDecodeError:
                raise ValueError(f"{where}: {entry!r} is not a mapping (source, kind, split, ...)") from None
        if not isinstance(entry, dict) or "source" not in entry:
            raise ValueError(f"{where}: expected a mapping with at least 'source', got {entry!r}")
        valid = [item.name for item in fields(cls)]
        unknown = sorted(set(entry) - set(valid))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {valid}")
        values = dict(entry)
        if "score_range" in values:
            values["score_range"] = tuple(float(bound) for bound in values["score_range"])
        try:
            return cls(**values).checked(where)
        except TypeError as error:
            raise ValueError(f"{where}: {error}") from None

    def checked(self, where: str) -> TrainSource:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"{where}: kind must be one of {SOURCE_KINDS}, got {self.kind!r}")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"{where}: weight must be > 0, got {self.weight}")
        if self.max_samples is not None and self.max_samples <= 0:
            raise ValueError(f"{where}: max_samples must be positive, got {self.max_samples}")
        low, high = self.score_range if len(self.score_range) == 2 else (None, None)
        if low is None or not low < high:
            raise ValueError(f"{where}: score_range must be [low, high] with low < high, got {self.score_range}")
        if self.label_map is not None:
            try:
                validate_label_map(self.label_map)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
        if self.kind != "nli" and self.label_map is not None:
            raise ValueError(f"{where}: label_map applies to kind nli only")
        return self

    @property
    def display_name(self) -> str:
        """``name``, or the file, or ``source[split]`` for a Hub dataset or SentEval folder."""
        return self.name or (self.source if Path(self.source).is_file() else f"{self.source}[{self.split}]")


@dataclass
class SourceCounts:
    """What one source gave: rows read, pairs kept (and, for NLI, what was dropped and why), pairs used."""

    name: str
    kind: str
    weight: float
    rows_read: int = 0
    pairs: int = 0
    pairs_used: int = 0
    nli: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _groups_by_first_text(sentences1: list[str]) -> list[int]:
    """Pairs that share their first text (an NLI premise) share a group id."""
    ids: dict[str, int] = {}
    return [ids.setdefault(text, len(ids)) for text in sentences1]


def _read_triplets(spec: TrainSource) -> list[tuple[str, str, str]]:
    if looks_like_local_path(spec.source):
        columns, rows = read_table(spec.source)
        require_columns(spec.source, columns, list(TRIPLET_COLUMNS))
        triplets = []
        for line, row in rows:
            texts = tuple(normalise_text(row.get(column)) for column in TRIPLET_COLUMNS)
            if not all(texts):
                raise DataError(f"{spec.source}:{line}: empty text in a triplet")
            triplets.append(texts)
        return triplets
    dataset = load_dataset(spec.source, spec.subset, split=spec.split)
    require_columns(f"{spec.source}[{spec.split}]", dataset.column_names, list(TRIPLET_COLUMNS))
    return [tuple(normalise_text(row[column]) for column in TRIPLET_COLUMNS) for row in dataset]


def _whole_groups(pairs: Dataset, max_samples: int, seed: int) -> Dataset:
    """About ``max_samples`` pairs made of whole groups, the groups drawn at random (the last one may be cut)."""
    members: dict[int, list[int]] = {}
    for row, group in enumerate(pairs["group"]):
        members.setdefault(group, []).append(row)
    order = list(members)
    random.Random(seed).shuffle(order)
    rows = [row for group in order for row in members[group]][:max_samples]
    return pairs.select(rows)


def _source_pairs(spec: TrainSource, label_map: dict, seed: int, keep_groups: bool) -> tuple[Dataset, SourceCounts]:
    counts = SourceCounts(name=spec.display_name, kind=spec.kind, weight=spec.weight)
    if spec.kind == "nli":
        # With hard-negative groups a subset is drawn by whole premises, else by rows.
        pairs, nli_counts = load_nli_pairs(spec.source, spec.split, spec.subset, spec.label_map or label_map,
                                           None if keep_groups else spec.max_samples, seed)
        counts.rows_read, counts.pairs = nli_counts.rows_read, nli_counts.kept
        pairs = pairs.add_column("group", _groups_by_first_text(pairs["sentence1"]))
        if keep_groups and spec.max_samples is not None and spec.max_samples < len(pairs):
            pairs = _whole_groups(pairs, spec.max_samples, seed)
            nli_counts.used_after_max_samples = len(pairs)
        counts.nli = nli_counts.to_dict()
        return pairs, counts
    if spec.kind == "sts":
        sts = load_sts_pairs(spec.source, spec.split, spec.display_name, spec.score_range)
        counts.rows_read = counts.pairs = len(sts)
        pairs = Dataset.from_dict({"sentence1": sts.sentences1, "sentence2": sts.sentences2, "score": sts.scores,
                                   "group": list(range(len(sts)))})
    else:
        triplets = _read_triplets(spec)
        counts.rows_read, counts.pairs = len(triplets), 2 * len(triplets)
        pairs = Dataset.from_dict({
            "sentence1": [anchor for anchor, _, _ in triplets for _ in range(2)],
            "sentence2": [text for _, positive, negative in triplets for text in (positive, negative)],
            "score": [score for _ in triplets for score in (1.0, 0.0)],
            "group": [index for index in range(len(triplets)) for _ in range(2)],
        })
    if spec.max_samples is not None and spec.max_samples < len(pairs):
        pairs = _whole_groups(pairs, spec.max_samples, seed) if keep_groups else \
            pairs.shuffle(seed=seed).select(range(spec.max_samples))
    return pairs, counts


def load_train_sources(sources: list[TrainSource], seed: int, label_map: dict | None = None,
                       keep_groups: bool = False) -> tuple[Dataset, list[SourceCounts]]:
    """All sources as one dataset of pairs with ``source`` and ``group`` columns (groups numbered apart across
    sources), and what each source gave. ``label_map`` is the default of NLI sources without their own;
    ``keep_groups`` draws ``max_samples`` subsets by whole groups (hard-negative batches need them whole)."""
    if not sources:
        raise DataError("train_datasets: no source given")
    label_map = validate_label_map(label_map or DEFAULT_LABEL_MAP)
    parts, all_counts, group_offset = [], [], 0
    for index, spec in enumerate(sources):
        pairs, counts = _source_pairs(spec, label_map, seed, keep_groups)
        if len(pairs) == 0:
            raise DataError(f"{counts.name}: no usable pairs")
        pairs = pairs.map(lambda batch, offset=group_offset, source=index: {
            "group": [group + offset for group in batch["group"]], "source": [source] * len(batch["group"])},
            batched=True, desc=f"source {index}")
        group_offset += max(pairs["group"]) + 1
        counts.pairs_used = len(pairs)
        parts.append(pairs.select_columns(["sentence1", "sentence2", "score", "source", "group"]))
        all_counts.append(counts)
    return concatenate_datasets(parts), all_counts
