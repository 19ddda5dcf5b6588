"""Telling local paths from Hub ids (a leaf module: data loading and model resolution both ask)."""

from __future__ import annotations

from pathlib import Path

DATA_FILE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".txt", ".parquet")


def looks_like_local_path(name: str) -> bool:
    """True for names that can only be paths (``./x``, ``/x``, ``~/x``, ``a/b/c``, ``x.csv``), never Hub ids."""
    return (name.startswith((".", "/", "~")) or name.count("/") > 1
            or Path(name).suffix.lower() in DATA_FILE_SUFFIXES)
