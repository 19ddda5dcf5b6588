"""Files a run writes beside its model: resolved config, data counts, STS tables, the layer x dims grid."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from ese_trainer.evaluation.layer_grid import grid_markdown
from ese_trainer.evaluation.sts import AVERAGE_KEY
from ese_trainer.evaluation.tables import markdown_table
from ese_trainer.release.plots import plot_layer_dim_heatmap


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def save_resolved_config(output_dir: str | Path, *argument_groups: Any) -> Path:
    """Every argument as used (file values, overrides and defaults) in one YAML file."""
    resolved: dict[str, Any] = {}
    for group in argument_groups:
        values = group.to_dict() if hasattr(group, "to_dict") else asdict(group) if is_dataclass(group) else group
        resolved.update(_plain(values))
    path = Path(output_dir) / "resolved_config.yaml"
    path.write_text(yaml.safe_dump(resolved, sort_keys=True))
    return path


def save_json(path: str | Path, payload: Any) -> Path:
    path = Path(path)
    path.write_text(json.dumps(_plain(payload), indent=2) + "\n")
    return path


RUN_RECORDS = ("run_info.json", "resolved_config.yaml", "data_counts.json")  # what start_output_dir writes


def earlier_runs(output_dir: str | Path) -> list[dict]:
    """The record of the runs before this one in ``output_dir`` (a resumed run overwrites the files): the
    ``earlier_runs`` its ``run_info.json`` kept, then that run's own ``run_info.json`` (without them),
    ``resolved_config.yaml`` and ``data_counts.json``; a file that is missing or does not parse is left out."""
    output_dir = Path(output_dir)
    record: dict[str, Any] = {}
    for name in RUN_RECORDS:
        try:
            text = (output_dir / name).read_text()
            record[Path(name).stem] = yaml.safe_load(text) if name.endswith(".yaml") else json.loads(text)
        except (OSError, ValueError, yaml.YAMLError):
            continue
    info = record.get("run_info")
    earlier = list(info.pop("earlier_runs", [])) if isinstance(info, dict) else []
    return earlier + [record] if record else earlier


def save_sts_results(output_dir: str | Path, tables: dict[str, dict[str, float]], model_name: str) -> str:
    """``eval_results.json`` and ``eval_results.md`` (rows: before / after); returns the Markdown table."""
    table = markdown_table(tables)
    save_json(Path(output_dir) / "eval_results.json", {"model": model_name, "metric": "cosine Spearman x100",
                                                        **tables})
    (Path(output_dir) / "eval_results.md").write_text(f"# STS results: {model_name}\n\n{table}\n")
    return table


def save_grid(grid: Mapping, path_stem: str | Path, title: str) -> list[Path]:
    """``<stem>.json`` (the whole grid), ``<stem>.md`` (average table, then one per task) and ``<stem>.png``."""
    path_stem = Path(path_stem)
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (path_stem.with_name(path_stem.name + suffix) for suffix in (".json", ".md", ".png"))
    save_json(json_path, grid)
    tasks = grid.get("tasks", {})
    label = "average over " + ", ".join(tasks) if len(tasks) > 1 else ", ".join(tasks)
    sections = [f"# {title}", f"Cosine Spearman x100, {label}.\n\n{grid_markdown(grid)}"]
    if len(tasks) > 1:
        sections += [f"## {name}\n\n{grid_markdown(grid, scores)}" for name, scores in tasks.items()]
    md_path.write_text("\n\n".join(sections) + "\n")
    values = [[grid[AVERAGE_KEY][str(layer)][str(dim)] for dim in grid["dims"]] for layer in grid["layers"]]
    plot_layer_dim_heatmap(values, grid["layers"], grid["dims"], png_path, title)
    return [json_path, md_path, png_path]
