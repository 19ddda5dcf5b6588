"""ESE's "layer x dimension" evaluation: STS of every (transformer layer, leading dims) slice of one encoder.

Espresso Sentence Embeddings (Li et al., arXiv 2402.14776) train an encoder so that shallow layers and
the first dims of the embedding stay useful. Cell ``(L, d)`` embeds a sentence as the masked pooling of
``hidden_states[L]`` (the output of transformer layer ``L``, 1-based) cut to its first ``d`` dims. One
forward per batch with ``output_hidden_states=True`` gives every cell; :func:`truncate_layers` then makes
a chosen depth actually cheaper to run.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Mapping, Sequence

from torch import nn
from transformers import PreTrainedTokenizerBase

from ese_trainer.data import STSPairs
from ese_trainer.evaluation.sts import AVERAGE_KEY, cosine_spearman, encode, encode_tasks
from ese_trainer.modeling.slicing import check_dims, check_layers, truncate_layers

ENCODE_SECONDS_KEY = "encode_seconds"


def evaluate_layer_dim_grid(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Mapping[str, STSPairs],
    pooling: str,
    layers: Sequence[int | str] | str | None,
    dims: Sequence[int] | None,
    max_seq_length: int = 128,
    batch_size: int = 64,
    show_progress: bool = True,
) -> dict:
    """Cosine Spearman x100 of every ``(layer, dim)`` cell on every task.

    Returns ``{"layers": [...], "dims": [...], "tasks": {task: {str(L): {str(d): score}}},
    "avg": {str(L): {str(d): mean over tasks}}}``; with one task ``avg`` is that task's grid. Cell
    ``(num_layers, hidden_size)`` is exactly :func:`ese_trainer.evaluation.sts.evaluate_sts`'s score.
    """
    layers = check_layers(layers, model.config.num_hidden_layers)
    dims = check_dims(dims, model.config.hidden_size)
    per_task: dict[str, dict[str, dict[str, float]]] = {}
    for name, first, second in encode_tasks(model, tokenizer, tasks, pooling, max_seq_length, batch_size,
                                            show_progress, layers=layers, max_dim=dims[-1]):
        per_task[name] = {
            str(layer): {str(dim): cosine_spearman(first[:, i, :dim], second[:, i, :dim], tasks[name].scores)
                         for dim in dims}
            for i, layer in enumerate(layers)
        }
    average = {
        str(layer): {str(dim): sum(grid[str(layer)][str(dim)] for grid in per_task.values()) / len(per_task)
                     for dim in dims}
        for layer in layers
    }
    return {"layers": layers, "dims": dims, "tasks": per_task, AVERAGE_KEY: average}


def encode_time_per_depth(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    sentences: list[str],
    pooling: str,
    layers: Sequence[int | str] | str | None,
    max_seq_length: int = 128,
    batch_size: int = 64,
    repeats: int = 2,
) -> dict[str, float]:
    """Wall-clock seconds (median of ``repeats``) to encode ``sentences`` with a copy of ``model`` cut to each depth.

    ``model`` itself is left whole; tokenisation is included, as it is in any real use of the truncated model.
    The repeats go round all depths in turn (a fresh copy each time, warmed up on one batch first), so that a
    slow spell of a shared machine spreads over the depths instead of landing on one of them.
    """
    layers = check_layers(layers, model.config.num_hidden_layers)
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    times: dict[str, list[float]] = {str(layer): [] for layer in layers}
    for _ in range(repeats):
        for layer in layers:
            truncated = truncate_layers(copy.deepcopy(model), layer)
            encode(truncated, tokenizer, sentences[:batch_size], pooling, max_seq_length, batch_size,
                   show_progress=False)
            start = time.perf_counter()
            encode(truncated, tokenizer, sentences, pooling, max_seq_length, batch_size, show_progress=False)
            times[str(layer)].append(time.perf_counter() - start)
            del truncated
    return {layer: statistics.median(values) for layer, values in times.items()}


def recommend_sizes(grid: Mapping, tolerances: Sequence[float] = (1.0, 2.0)) -> list[dict]:
    """For each tolerance, the smallest (layer, dims) cell whose average is within it of the full cell: fewest
    layers first (what encoding costs), then fewest dims (what storing costs); with its encode speed-up over the
    full depth when ``grid`` holds the encode times."""
    scores, times = grid[AVERAGE_KEY], grid.get(ENCODE_SECONDS_KEY) or {}
    last, width = str(max(grid["layers"])), str(max(grid["dims"]))
    full = scores[last][width]
    cells = sorted((int(layer), int(dim)) for layer in scores for dim in scores[layer])
    recommended = []
    for tolerance in tolerances:
        layer, dim = next((layer, dim) for layer, dim in cells if scores[str(layer)][str(dim)] >= full - tolerance)
        speed_up = times[last] / times[str(layer)] if str(layer) in times and last in times else None
        recommended.append({"tolerance": tolerance, "layer": layer, "dim": dim, "score": scores[str(layer)][str(dim)],
                            "full_score": full, "encode_speed_up": speed_up})
    return recommended


def grid_markdown(grid: Mapping, scores: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """Markdown table: one row per layer, one column per dim (``scores``, default the average grid).

    With ``grid["encode_seconds"]`` two columns follow: encode seconds and the speed-up over the deepest timed layer.
    """
    scores = grid[AVERAGE_KEY] if scores is None else scores
    dims, times = grid["dims"], grid.get(ENCODE_SECONDS_KEY) or {}
    deepest = times[max(times, key=int)] if times else None
    header = ["layer \\ dim", *map(str, dims)] + (["encode s", "speed-up"] if times else [])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for layer in grid["layers"]:
        cells = [str(layer)] + [f"{scores[str(layer)][str(dim)]:.2f}" for dim in dims]
        if times:
            seconds = times.get(str(layer))
            cells += [f"{seconds:.2f}", f"{deepest / seconds:.2f}x"] if seconds else ["–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
