"""Training sources as grouped rows: NLI premises, scored STS pairs, triplets/n-tuples and plain pairs, several in one
run.

Every source becomes rows (:mod:`ese_trainer.data.rows`): an anchor with its positive, hard negatives and scored
texts, plus a ``source`` column (each batch comes from one source).

- ``nli``: labels through the label map; a premise's hypotheses become its rows (one per positive, the rest dealt
  over them); unlabelled, unknown-label and empty rows dropped and counted. ``anchors: both`` adds each row again
  anchored on its positive (sentence-transformers' NLI triplets: the entailment as a query for its premise too);
  ``both_in_batch`` adds them for the in-batch term only.
- ``sts``: gold scores in ``score_range`` (default [0, 5]) normalised like evaluation data, each pair a row whose
  role follows its score; a NaN, non-numeric or out-of-range score is an error naming the file and row.
- ``triplet``: ``(anchor, positive, negative)`` or ``(anchor, positive, negative_1..negative_k)`` rows (all-nli's
  ``triplet`` layout), read as they are: the positive scores 1, the negatives 0.
- ``pair``: ``(anchor, positive)`` rows with no negative of their own (``mine_negatives`` can add some).
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
from ese_trainer.data.mining import MiningSettings, mine_row_negatives
from ese_trainer.data.nli import DEFAULT_LABEL_MAP, load_nli_pairs, validate_label_map
from ese_trainer.data.rows import DEFAULT_THRESHOLDS, NEGATIVE, POSITIVE, RoleThresholds, Rows
from ese_trainer.data.sts import DEFAULT_SCORE_RANGE, load_sts_pairs
from ese_trainer.paths import looks_like_local_path

SOURCE_KINDS = ("nli", "sts", "triplet", "pair")
# What anchors an NLI source's rows: its premises; its positives too; its positives too, the added rows in the
# in-batch term only (each premise-entailment pair ranked once).
NLI_ANCHORS = ("premise", "both", "both_in_batch")


@dataclass(frozen=True)
class TrainSource:
    """One entry of ``train_datasets``.

    ``source``: Hub id, file or folder; ``kind``: nli, sts, triplet or pair; ``split``/``subset``: of a Hub dataset
    (or the SentEval file suffix); ``max_samples``: a seeded random subset of this many rows; ``weight``: how many
    times its rows are drawn per epoch (1 = each once); ``label_map`` (nli; default the run's); ``score_range`` (sts;
    default [0, 5]); ``name`` (default: the source); ``mine_negatives``: hard negatives mined for its rows with a
    positive (:class:`~ese_trainer.data.mining.MiningSettings` keys, ``{}`` for the defaults); ``loss_weights``: the
    combined loss's weights for this source's steps (``{cosent_w: 1, ibn_w: 0}``; a key left out keeps the run's
    weight), as sentence-transformers trains each dataset with a loss of its own; ``anchors`` (nli; default the
    run's ``nli_anchors``): ``premise``, or ``both`` to add each row anchored on its positive
    (:meth:`~ese_trainer.data.rows.Rows.with_positives_as_anchors`), or ``both_in_batch`` to add them for the
    in-batch term only (the premise-entailment pair is not ranked a second time).
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
    mine_negatives: dict | None = None
    loss_weights: dict | None = None
    anchors: str | None = None

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
        if self.anchors is not None and self.anchors not in NLI_ANCHORS:
            raise ValueError(f"{where}: anchors must be one of {NLI_ANCHORS}, got {self.anchors!r}")
        if self.kind != "nli" and self.anchors is not None:
            raise ValueError(f"{where}: anchors applies to kind nli only")
        if self.loss_weights is not None:
            self.check_loss_weights(where)
        if self.mine_negatives is not None:
            try:
                self.mining_settings()
            except (TypeError, ValueError) as error:
                raise ValueError(f"{where}: mine_negatives: {error}") from None
        return self

    def check_loss_weights(self, where: str) -> None:
        """``loss_weights`` is a mapping of term weights (``<term>_w``) to finite numbers >= 0; which terms exist is
        the objective's to check (``ese_trainer.training.build``)."""
        if not isinstance(self.loss_weights, dict) or not self.loss_weights:
            raise ValueError(f"{where}: loss_weights must be a mapping such as {{cosent_w: 1, ibn_w: 0}}, got "
                             f"{self.loss_weights!r}")
        for key, weight in self.loss_weights.items():
            if not str(key).endswith("_w"):
                raise ValueError(f"{where}: loss_weights: {key!r} is not a term weight (cosent_w, ibn_w, ...)")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
                raise ValueError(f"{where}: loss_weights: {key} must be a number >= 0, got {weight!r}")

    def mining_settings(self) -> MiningSettings | None:
        if self.mine_negatives is None:
            return None
        if not isinstance(self.mine_negatives, dict):
            raise ValueError(f"expected a mapping of {[item.name for item in fields(MiningSettings)]}, "
                             f"got {self.mine_negatives!r}")
        return MiningSettings(**self.mine_negatives)

    @property
    def display_name(self) -> str:
        """``name``, or the file, or ``source[split]`` for a Hub dataset or SentEval folder."""
        return self.name or (self.source if Path(self.source).is_file() else f"{self.source}[{self.split}]")


@dataclass
class SourceCounts:
    """What one source gave: rows read, pairs kept (for NLI, what was dropped and why), the rows built, the rows used
    (after ``max_samples``) and what they hold (``rows``: with a positive, hard negatives, ranking pairs), mined
    negatives, the source's own loss weights and (NLI) what anchors its rows."""

    name: str
    kind: str
    weight: float
    source: str = ""
    rows_read: int = 0
    pairs: int = 0
    rows_built: int = 0
    rows_used: int = 0
    rows: dict = field(default_factory=dict)
    nli: dict = field(default_factory=dict)
    mined: dict = field(default_factory=dict)
    loss_weights: dict | None = None
    anchors: str | None = None  # nli: what anchors its rows (one of ``NLI_ANCHORS``)

    def to_dict(self) -> dict:
        return asdict(self)


def _tuple_columns(source: str, columns: list[str]) -> list[str]:
    """``anchor, positive`` then ``negative`` or ``negative_1..negative_k`` (all present), in that order."""
    require_columns(source, columns, ["anchor", "positive"])
    numbered = sorted((column for column in columns if column.startswith("negative_")
                       and column.removeprefix("negative_").isdigit()),
                      key=lambda column: int(column.removeprefix("negative_")))
    return ["anchor", "positive", *(["negative"] if "negative" in columns else []), *numbered]


def _read_tuples(spec: TrainSource) -> list[tuple[str, ...]]:
    """Rows of text columns (``anchor``, ``positive``, negatives): an empty text or a missing column is an error
    naming the file and row."""
    if looks_like_local_path(spec.source):
        columns, rows = read_table(spec.source)
        wanted = _tuple_columns(spec.source, columns)
        if spec.kind == "triplet" and len(wanted) < 3:
            raise DataError(f"{spec.source}: missing column 'negative' (or negative_1..negative_k) of a triplet "
                            f"source; found {columns}")
        tuples = []
        for line, row in rows:
            texts = tuple(normalise_text(row.get(column)) for column in wanted)
            empty = [column for column, text in zip(wanted, texts) if not text]
            if empty:
                raise DataError(f"{spec.source}:{line}: empty text in column(s) {empty}")
            tuples.append(texts)
        return tuples
    where = f"{spec.source}[{spec.split}]"
    dataset = load_dataset(spec.source, spec.subset, split=spec.split)
    wanted = _tuple_columns(where, dataset.column_names)
    tuples = []
    for index, row in enumerate(dataset):
        texts = tuple(normalise_text(row[column]) for column in wanted)
        if not all(texts):
            raise DataError(f"{where} row {index}: empty text")
        tuples.append(texts)
    return tuples


def _nli_rows(spec: TrainSource, label_map: dict, thresholds: RoleThresholds, seed: int,
              counts: SourceCounts) -> Rows:
    pairs, nli_counts = load_nli_pairs(spec.source, spec.split, spec.subset, spec.label_map or label_map, None, seed)
    counts.rows_read, counts.pairs = nli_counts.rows_read, nli_counts.kept
    counts.nli = nli_counts.to_dict()
    hypotheses: dict[str, list[tuple[str, float]]] = {}
    for premise, hypothesis, score in zip(pairs["sentence1"], pairs["sentence2"], pairs["score"]):
        hypotheses.setdefault(premise, []).append((hypothesis, score))
    rows = Rows()
    for premise, scored in hypotheses.items():
        rows.group(premise, scored, thresholds)
    if spec.anchors in ("both", "both_in_batch"):
        return rows.with_positives_as_anchors(rescore=spec.anchors == "both")
    return rows


def _source_rows(spec: TrainSource, label_map: dict, thresholds: RoleThresholds, seed: int,
                 counts: SourceCounts) -> Rows:
    if spec.kind == "nli":
        return _nli_rows(spec, label_map, thresholds, seed, counts)
    rows = Rows()
    if spec.kind == "sts":
        sts = load_sts_pairs(spec.source, spec.split, spec.display_name, spec.score_range)
        counts.rows_read = counts.pairs = len(sts)
        for first, second, score in zip(sts.sentences1, sts.sentences2, sts.scores):
            rows.add(first, [second], [score], [thresholds.role(score)])
        return rows
    tuples = _read_tuples(spec)
    counts.rows_read = len(tuples)
    for anchor, positive, *negatives in tuples:
        rows.add(anchor, [positive, *negatives], [1.0] + [0.0] * len(negatives),
                 [POSITIVE] + [NEGATIVE] * len(negatives))
    counts.pairs = sum(len(texts) for texts in rows.texts)
    return rows


def _subset(rows: Rows, max_samples: int | None, seed: int) -> Rows:
    if max_samples is None or max_samples >= len(rows):
        return rows
    chosen = sorted(random.Random(seed).sample(range(len(rows)), max_samples))
    subset = Rows()
    for index in chosen:
        subset.add(rows.anchor[index], rows.texts[index], rows.scores[index], rows.roles[index])
    return subset


def load_train_sources(sources: list[TrainSource], seed: int, label_map: dict | None = None,
                       thresholds: RoleThresholds = DEFAULT_THRESHOLDS, mining_model: str | None = None,
                       mining_cache: str | Path | None = None) -> tuple[Dataset, list[SourceCounts]]:
    """All sources as one dataset of rows (``anchor``, ``texts``, ``scores``, ``roles``, ``source``) and what each
    source gave. ``label_map`` is the default of NLI sources without their own; ``thresholds`` turn scores into
    roles; ``mining_model`` (a folder) mines the negatives of sources with ``mine_negatives``, its embeddings cached
    in ``mining_cache``."""
    if not sources:
        raise DataError("train_datasets: no source given")
    label_map = validate_label_map(label_map or DEFAULT_LABEL_MAP)
    parts, all_counts = [], []
    for index, spec in enumerate(sources):
        counts = SourceCounts(name=spec.display_name, kind=spec.kind, weight=spec.weight, source=spec.source,
                              loss_weights=spec.loss_weights,
                              anchors=(spec.anchors or NLI_ANCHORS[0]) if spec.kind == "nli" else None)
        rows = _source_rows(spec, label_map, thresholds, seed, counts)
        if len(rows) == 0:
            raise DataError(f"{counts.name}: no usable rows")
        counts.rows_built = len(rows)
        rows = _subset(rows, spec.max_samples, seed)
        mining = spec.mining_settings()
        if mining is not None:
            if mining_model is None:
                raise DataError(f"{counts.name}: mine_negatives needs a model to mine with")
            rows, counts.mined = mine_row_negatives(rows, mining, mining_model, counts.name, mining_cache)
        counts.rows, counts.rows_used = rows.counts.to_dict(), len(rows)
        parts.append(Dataset.from_dict({**rows.columns(), "source": [index] * len(rows)}))
        all_counts.append(counts)
    return concatenate_datasets(parts), all_counts
