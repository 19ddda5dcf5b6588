"""STS evaluation pairs with gold scores normalised from [0, 5] to [0, 1].

Readers for SentEval's STS12–16 folders ("all" setting: every subset of a year pooled, pairs without gold
skipped, texts whitespace-normalised), STS-B's tab layout, SICK, plain csv/tsv/jsonl files with
``sentence1``, ``sentence2``, ``score`` columns, and ``mteb/*-sts`` Hub datasets. A file's layout is recognised
from its content, whatever it is called (:func:`sniff_sts_layout`). A gold score that is NaN, non-numeric or
outside [0, 5] is an error naming the file and row, never clipped or skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from datasets import load_dataset

from ese_trainer.data.errors import DataError
from ese_trainer.data.files import (
    JSON_SUFFIXES,
    normalise_text,
    read_table,
    read_utf8_lines,
    require_columns,
    table_delimiter,
)
from ese_trainer.paths import looks_like_local_path

MAX_GOLD_SCORE = 5.0
# The folder, relative to the repository root, holding the embedded SentEval-layout data (see data/README.md).
EMBEDDED_DATA_DIR = "data"
# ``sts_data_dir`` value that reads the test suite from the ``mteb/*-sts`` Hub datasets instead of a folder.
HUB_STS_SOURCE = "hub"
STSB_COLUMNS = ("genre", "file", "year", "id", "score", "sentence1", "sentence2")
SICK_COLUMNS = ("sentence_A", "sentence_B", "relatedness_score")
TABLE_COLUMNS = ("sentence1", "sentence2", "score")


@dataclass
class STSPairs:
    """Sentence pairs and their gold scores in [0, 1]."""

    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class STSTask:
    """Where a task's test pairs live: a SentEval-layout location and the equivalent Hub dataset."""

    senteval_path: str
    senteval_subsets: tuple[str, ...] = ()
    hub_id: str = ""
    hub_split: str = "test"


STS_TASKS = {
    "STS12": STSTask("STS/STS12-en-test", ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
                     "mteb/sts12-sts"),
    "STS13": STSTask("STS/STS13-en-test", ("FNWN", "headlines", "OnWN"), "mteb/sts13-sts"),
    "STS14": STSTask("STS/STS14-en-test", ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
                     "mteb/sts14-sts"),
    "STS15": STSTask("STS/STS15-en-test", ("answers-forums", "answers-students", "belief", "headlines", "images"),
                     "mteb/sts15-sts"),
    "STS16": STSTask("STS/STS16-en-test", ("answer-answer", "headlines", "plagiarism", "postediting",
                                           "question-question"), "mteb/sts16-sts"),
    "STSBenchmark": STSTask("STS/STSBenchmark/sts-test.csv", hub_id="mteb/stsbenchmark-sts"),
    "SICKRelatedness": STSTask("SICK/SICK_test_annotated.txt", hub_id="mteb/sickr-sts"),
}


DEFAULT_SCORE_RANGE = (0.0, MAX_GOLD_SCORE)


def parse_gold(value, source: str, row: int | str, score_range: tuple[float, float] = DEFAULT_SCORE_RANGE) -> float:
    """A gold score in ``score_range`` (default [0, 5]) mapped linearly to [0, 1]; anything else (NaN, out of range,
    not a number) is an error naming source and row."""
    low, high = score_range
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{source}:{row}: gold score {value!r} is not a number") from None
    if math.isnan(score) or not low <= score <= high:
        raise DataError(f"{source}:{row}: gold score {value!r} is outside [{low:g}, {high:g}]")
    return (score - low) / (high - low)


def _checked_text(value, source: str, row: int | str) -> str:
    text = normalise_text(value) if isinstance(value, str) else ""
    if not text:
        raise DataError(f"{source}:{row}: empty text")
    return text


def _collect(name: str, rows, score_range: tuple[float, float] = DEFAULT_SCORE_RANGE) -> STSPairs:
    """Build pairs from ``(source, row, text1, text2, gold)`` tuples, validating every field."""
    pairs = STSPairs(name, [], [], [])
    for source, row, text1, text2, gold in rows:
        pairs.sentences1.append(_checked_text(text1, source, row))
        pairs.sentences2.append(_checked_text(text2, source, row))
        pairs.scores.append(parse_gold(gold, source, row, score_range))
    if not pairs.scores:
        raise DataError(f"{name}: no pairs found")
    return pairs


def read_senteval_year(directory: str | Path, subsets: tuple[str, ...], name: str) -> STSPairs:
    """One STS year in the "all" setting: subsets pooled; pairs whose gold line is blank are skipped."""
    directory = Path(directory)

    def rows():
        for subset in subsets:
            input_path = directory / f"STS.input.{subset}.txt"
            gold_path = directory / f"STS.gs.{subset}.txt"
            inputs, golds = read_utf8_lines(input_path), read_utf8_lines(gold_path)
            if len(inputs) != len(golds):
                raise DataError(f"{input_path}: {len(inputs)} pairs but {gold_path} has {len(golds)} gold lines")
            for line_number, (line, gold) in enumerate(zip(inputs, golds), start=1):
                if not gold.strip():
                    continue
                fields = line.split("\t")
                if len(fields) < 2:
                    raise DataError(f"{input_path}:{line_number}: expected two tab-separated sentences")
                yield str(gold_path), line_number, fields[0], fields[1], gold.strip()

    return _collect(name, rows())


def read_stsb_csv(path: str | Path, name: str = "STSBenchmark",
                  score_range: tuple[float, float] = DEFAULT_SCORE_RANGE) -> STSPairs:
    """STS-B's headerless tab layout (``sts-*.csv``): genre, file, year, id, score, sentence1, sentence2 (extra
    trailing columns ignored)."""
    path = Path(path)

    def rows():
        for line_number, line in enumerate(read_utf8_lines(path), start=1):
            fields = line.split("\t")
            if len(fields) < len(STSB_COLUMNS):
                raise DataError(f"{path}:{line_number}: expected at least {len(STSB_COLUMNS)} tab-separated columns "
                                f"({', '.join(STSB_COLUMNS)}), got {len(fields)}")
            yield str(path), line_number, fields[5], fields[6], fields[4]

    return _collect(name, rows(), score_range)


def read_sick(path: str | Path, name: str = "SICKRelatedness",
              score_range: tuple[float, float] = DEFAULT_SCORE_RANGE) -> STSPairs:
    """SICK with a header row; ``relatedness_score`` (1–5) is the gold."""
    path = Path(path)
    lines = read_utf8_lines(path)
    header = lines[0].split("\t") if lines else []
    wanted = list(SICK_COLUMNS)
    require_columns(str(path), header, wanted)
    index = [header.index(column) for column in wanted]

    def rows():
        for line_number, line in enumerate(lines[1:], start=2):
            fields = line.split("\t")
            if len(fields) < len(header):
                raise DataError(f"{path}:{line_number}: expected {len(header)} tab-separated columns")
            yield str(path), line_number, *(fields[i] for i in index)

    return _collect(name, rows(), score_range)


def read_sts_table(path: str | Path, name: str | None = None,
                   score_range: tuple[float, float] = DEFAULT_SCORE_RANGE) -> STSPairs:
    """A csv/tsv/jsonl file with ``sentence1``, ``sentence2`` and ``score`` (0–5) columns."""
    columns, rows = read_table(path)
    require_columns(str(path), columns, list(TABLE_COLUMNS))
    return _collect(name or Path(path).stem, (
        (str(path), line, row.get("sentence1"), row.get("sentence2"), row.get("score")) for line, row in rows
    ), score_range)


def read_hub_sts(dataset_id: str, split: str = "test", name: str | None = None,
                 score_range: tuple[float, float] = DEFAULT_SCORE_RANGE) -> STSPairs:
    """An ``mteb/*-sts`` style Hub dataset: ``sentence1``, ``sentence2``, ``score`` (0–5)."""
    dataset = load_dataset(dataset_id, split=split)
    source = f"{dataset_id}[{split}]"
    require_columns(source, dataset.column_names, ["sentence1", "sentence2", "score"])
    return _collect(name or dataset_id, (
        (source, index, text1, text2, gold)
        for index, (text1, text2, gold) in enumerate(zip(dataset["sentence1"], dataset["sentence2"], dataset["score"]))
    ), score_range)


def sniff_sts_layout(path: Path) -> str:
    """``"stsb"``, ``"sick"`` or ``"table"``: the layout of an STS file, from its first line, not its name.

    - SICK: a tab-separated header with ``sentence_A``, ``sentence_B``, ``relatedness_score``;
    - table: jsonl/json, or a header with ``sentence1``, ``sentence2``, ``score`` (tab or comma separated);
    - STS-B: no such header and at least 7 tab-separated fields (genre, file, year, id, score, s1, s2).
    """
    if path.suffix.lower() in JSON_SUFFIXES:
        return "table"
    lines = read_utf8_lines(path)
    first = lines[0] if lines else ""
    header = {column.strip() for column in first.split(table_delimiter(path, first))}
    if set(SICK_COLUMNS) <= header:
        return "sick"
    if set(TABLE_COLUMNS) <= header:
        return "table"
    if len(first.split("\t")) >= len(STSB_COLUMNS):
        return "stsb"
    raise DataError(
        f"{path}: not a recognised STS file. Expected STS-B's tab layout ({', '.join(STSB_COLUMNS)}; no header), "
        f"SICK's header ({', '.join(SICK_COLUMNS)}) or a csv/tsv/jsonl table with {', '.join(TABLE_COLUMNS)} "
        f"columns; line 1 is {first[:120]!r}"
    )


def load_sts_pairs(source: str, split: str = "test", name: str | None = None,
                   score_range: tuple[float, float] = DEFAULT_SCORE_RANGE) -> STSPairs:
    """Pairs from a file (layout recognised by :func:`sniff_sts_layout`) or a Hub dataset id / local dataset
    repository; gold scores in ``score_range`` (default [0, 5]) normalised to [0, 1]."""
    path = Path(source).expanduser()
    if path.is_dir():  # a dataset repository on disk (e.g. a Hub snapshot)
        return read_hub_sts(str(path), split, name, score_range)
    if path.is_file():
        layout = sniff_sts_layout(path)
        if layout == "stsb":
            return read_stsb_csv(path, name or path.stem, score_range)
        if layout == "sick":
            return read_sick(path, name or path.stem, score_range)
        return read_sts_table(path, name, score_range)
    if looks_like_local_path(source):
        raise DataError(f"{source}: file not found")
    return read_hub_sts(source, split, name, score_range)


def load_sts_task(task: str, data_dir: str | Path | None = EMBEDDED_DATA_DIR) -> STSPairs:
    """A task of the standard suite, from a SentEval-layout data folder (default: the embedded ``data/``), or
    from its ``mteb/*-sts`` Hub dataset when ``data_dir`` is ``"hub"`` (or None)."""
    if task not in STS_TASKS:
        raise DataError(f"unknown STS task {task!r}; choose from {list(STS_TASKS)}")
    spec = STS_TASKS[task]
    if data_dir is None or str(data_dir) == HUB_STS_SOURCE:
        return read_hub_sts(spec.hub_id, spec.hub_split, task)
    location = Path(data_dir).expanduser() / spec.senteval_path
    if not location.exists():
        raise DataError(f"{task}: {location} not found in data folder {data_dir} (the embedded folder is data/ at the "
                        f"repository root; set sts_data_dir to a SentEval-layout folder, or to "
                        f"'{HUB_STS_SOURCE}' for the mteb/*-sts datasets)")
    if spec.senteval_subsets:
        return read_senteval_year(location, spec.senteval_subsets, task)
    return load_sts_pairs(str(location), name=task)
