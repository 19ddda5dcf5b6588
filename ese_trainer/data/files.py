"""Reading local text files strictly: UTF-8 only, every problem reported with file and line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ese_trainer.data.errors import DataError


def read_utf8_lines(path: str | Path) -> list[str]:
    """Lines of ``path`` without line endings; non-UTF-8 bytes are an error naming the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    lines = []
    for line_number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            lines.append(raw.decode("utf-8-sig" if line_number == 1 else "utf-8"))
        except UnicodeDecodeError as error:
            raise DataError(
                f"{path}:{line_number}: not valid UTF-8 (byte {error.start}: {raw[error.start:error.start + 4]!r})"
            ) from None
    return lines


JSON_SUFFIXES = (".jsonl", ".json")


def table_delimiter(path: Path, header: str) -> str:
    """``.tsv`` → tab, ``.csv`` → comma; any other name: tab when the header line holds one, else comma."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        return "\t" if suffix == ".tsv" else ","
    return "\t" if "\t" in header else ","


def read_table(path: str | Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Rows of a jsonl/json file, or of a delimited text file with a header, as ``(column names, [(row number,
    row)])``. ``.tsv`` is tab-separated, ``.csv`` comma-separated; other names are read as tab-separated when
    the header holds a tab, else as csv.

    Row numbers are the file's line numbers (the header is line 1 for delimited files).
    """
    path = Path(path)
    lines = read_utf8_lines(path)
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES and lines and lines[0].lstrip().startswith("["):
        try:
            records = json.loads("\n".join(lines))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None
        rows = list(enumerate(records, start=1))
    elif suffix in JSON_SUFFIXES:
        rows = []
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rows.append((line_number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line_number}: invalid JSON ({error.msg})") from None
    else:
        delimiter = table_delimiter(path, lines[0] if lines else "")
        reader = csv.DictReader(io.StringIO("\n".join(lines)), delimiter=delimiter)
        rows = [(reader.line_num, row) for row in reader]  # line_num: the row's last physical line
        return list(reader.fieldnames or []), rows
    for line_number, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
    columns = list(dict.fromkeys(key for _, row in rows for key in row))
    return columns, rows


def normalise_text(text) -> str:
    """Whitespace-normalised text (split and re-joined, as SentEval does); "" for None."""
    return " ".join(str(text).split()) if text is not None else ""


def require_columns(source: str, available: list[str], wanted: list[str]) -> None:
    missing = [column for column in wanted if column not in available]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; found {available}")
