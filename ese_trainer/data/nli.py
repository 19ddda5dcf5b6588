"""NLI sentence pairs with their labels mapped to similarity scores in [0, 1].

Raw NLI labels (0 entailment, 1 neutral, 2 contradiction) are *classes*, not similarities: fed as scores
they would rank contradiction above entailment. Every label goes through the label map; rows that are
unlabelled (-1, SNLI's "-"), carry an unknown label or an empty text are dropped and counted, never
defaulted.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datasets import ClassLabel, Dataset, load_dataset

from ese_trainer.data.errors import DataError
from ese_trainer.data.files import normalise_text, read_table, read_utf8_lines, require_columns

logger = logging.getLogger(__name__)

NLI_LABEL_NAMES = ("entailment", "neutral", "contradiction")
DEFAULT_LABEL_MAP = {"entailment": 1.0, "neutral": 0.5, "contradiction": 0.0}
UNLABELLED_VALUES = {-1, "-1", "-", ""}
# Text column pairs recognised in files and Hub datasets, in order of preference.
TEXT_COLUMN_PAIRS = (("premise", "hypothesis"), ("sentence1", "sentence2"), ("anchor", "positive"))
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


@dataclass
class NLIDropCounts:
    """What happened to every row read: kept, or dropped with the reason."""

    source: str
    rows_read: int = 0
    kept: int = 0
    dropped_unlabelled: int = 0
    dropped_unknown_label: int = 0
    dropped_empty_text: int = 0
    unknown_labels: dict[str, int] = field(default_factory=dict)
    label_counts: dict[str, int] = field(default_factory=dict)
    used_after_max_samples: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def validate_label_map(label_map: dict) -> dict[str, float]:
    """Lower-case names, float scores in [0, 1]; names must be NLI label names."""
    if not label_map:
        raise ValueError("label_map is empty")
    checked = {}
    for name, score in label_map.items():
        key = str(name).strip().lower()
        if key not in NLI_LABEL_NAMES:
            raise ValueError(f"label_map key {name!r} is not one of {NLI_LABEL_NAMES}")
        value = float(score)
        if not 0.0 <= value <= 1.0 or math.isnan(value):
            raise ValueError(f"label_map[{name!r}] = {score!r} is outside [0, 1]")
        checked[key] = value
    return checked


def label_name(raw) -> str | None:
    """The NLI label name of ``raw`` (0/1/2, "0"/"1"/"2" or a name); "" for unlabelled, None if unknown."""
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return ""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    text = str(raw).strip().lower()
    if raw in UNLABELLED_VALUES or text in UNLABELLED_VALUES:
        return ""
    if text.isdigit() and int(text) < len(NLI_LABEL_NAMES):
        return NLI_LABEL_NAMES[int(text)]
    return text if text in NLI_LABEL_NAMES else None


def _pick_text_columns(source: str, columns: list[str], text_columns: tuple[str, str] | None) -> tuple[str, str]:
    if text_columns:
        require_columns(source, columns, list(text_columns))
        return text_columns
    for pair in TEXT_COLUMN_PAIRS:
        if all(column in columns for column in pair):
            return pair
    raise DataError(f"{source}: missing text columns; expected one of {TEXT_COLUMN_PAIRS}, found {columns}")


def _read_senteval_split(directory: Path, split: str) -> dict[str, list]:
    """SentEval's SNLI layout: ``s1.<split>``, ``s2.<split>``, ``labels.<split>``, one item per line."""
    files = {name: directory / f"{name}.{split}" for name in ("s1", "s2", "labels")}
    columns = {name: read_utf8_lines(path) for name, path in files.items()}
    lengths = {str(files[name]): len(lines) for name, lines in columns.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"{directory}: files for split {split!r} differ in line count: {lengths}")
    return {"premise": columns["s1"], "hypothesis": columns["s2"], "label": columns["labels"]}


def _read_local_file(path: Path, text_columns: tuple[str, str] | None, label_column: str) -> dict[str, list]:
    columns, rows = read_table(path)
    first, second = _pick_text_columns(str(path), columns, text_columns)
    require_columns(str(path), columns, [label_column])
    return {
        "premise": [row.get(first) for _, row in rows],
        "hypothesis": [row.get(second) for _, row in rows],
        "label": [row.get(label_column) for _, row in rows],
    }


def _read_hub(dataset_id: str, subset: str | None, split: str, text_columns, label_column: str) -> dict[str, list]:
    dataset = load_dataset(dataset_id, subset, split=split)
    first, second = _pick_text_columns(f"{dataset_id}[{split}]", dataset.column_names, text_columns)
    require_columns(f"{dataset_id}[{split}]", dataset.column_names, [label_column])
    labels = dataset[label_column]
    label_feature = dataset.features[label_column]
    if isinstance(label_feature, ClassLabel):  # ids mean what the dataset's own names say, not our order
        labels = [label_feature.names[label] if label is not None and label >= 0 else label for label in labels]
    return {"premise": dataset[first], "hypothesis": dataset[second], "label": labels}


def read_nli_rows(
    source: str,
    split: str = "train",
    subset: str | None = None,
    text_columns: tuple[str, str] | None = None,
    label_column: str = "label",
) -> dict[str, list]:
    """Raw rows (premise, hypothesis, label) from a Hub id, a file, a SentEval folder or a dataset folder."""
    path = Path(source).expanduser()
    if path.is_dir() and (path / f"s1.{split}").is_file():
        return _read_senteval_split(path, split)
    if path.is_dir():  # a dataset repository on disk (e.g. a Hub snapshot)
        return _read_hub(str(path), subset, split, text_columns, label_column)
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        return _read_local_file(path, text_columns, label_column)
    return _read_hub(source, subset, split, text_columns, label_column)


def load_nli_pairs(
    source: str,
    split: str = "train",
    subset: str | None = None,
    label_map: dict | None = None,
    max_samples: int | None = None,
    seed: int = 42,
    text_columns: tuple[str, str] | None = None,
    label_column: str = "label",
) -> tuple[Dataset, NLIDropCounts]:
    """Pairs as a ``Dataset`` with columns ``sentence1``, ``sentence2``, ``score`` (float in [0, 1]).

    Rows are shuffled with ``seed`` before ``max_samples`` are taken, so a subset is a random sample.
    """
    scores_by_name = validate_label_map(label_map or DEFAULT_LABEL_MAP)
    raw = read_nli_rows(source, split, subset, text_columns, label_column)
    counts = NLIDropCounts(source=f"{source}[{split}]" if not Path(source).is_file() else source)
    unknown: Counter = Counter()
    kept_labels: Counter = Counter()
    sentence1, sentence2, scores = [], [], []
    for premise, hypothesis, label in zip(raw["premise"], raw["hypothesis"], raw["label"]):
        counts.rows_read += 1
        name = label_name(label)
        if name == "":
            counts.dropped_unlabelled += 1
            continue
        if name is None or name not in scores_by_name:
            counts.dropped_unknown_label += 1
            unknown[str(label)] += 1
            continue
        premise, hypothesis = normalise_text(premise), normalise_text(hypothesis)
        if not premise or not hypothesis:
            counts.dropped_empty_text += 1
            continue
        sentence1.append(premise)
        sentence2.append(hypothesis)
        scores.append(scores_by_name[name])
        kept_labels[name] += 1
    counts.kept = len(scores)
    counts.unknown_labels = dict(unknown.most_common(20))
    counts.label_counts = dict(kept_labels)
    if not scores:
        raise DataError(f"{counts.source}: no usable pairs among {counts.rows_read} rows ({counts.to_dict()})")
    dataset = Dataset.from_dict({"sentence1": sentence1, "sentence2": sentence2, "score": scores}).shuffle(seed=seed)
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.select(range(max_samples))
    counts.used_after_max_samples = len(dataset)
    unknown_named = f" {counts.unknown_labels}" if counts.unknown_labels else ""
    logger.info(
        "%s: read %d rows, kept %d (dropped %d unlabelled, %d unknown label%s, %d empty text); using %d",
        counts.source, counts.rows_read, counts.kept, counts.dropped_unlabelled, counts.dropped_unknown_label,
        unknown_named, counts.dropped_empty_text, counts.used_after_max_samples,
    )
    return dataset, counts
