"""Markdown tables of STS results (a leaf module: run files, model cards and reports format through it)."""

from __future__ import annotations

from collections.abc import Mapping


def markdown_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """A Markdown table: one row per named result set (e.g. before/after), one column per task, 2 decimals."""
    columns = list(dict.fromkeys(column for row in rows.values() for column in row))
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, row in rows.items():
        cells = [f"{row[column]:.2f}" if column in row else "–" for column in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
