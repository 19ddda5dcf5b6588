"""Plots saved next to a run's results."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_curves(
    log_history: list[dict], path: str | Path, dev_metric: str = "eval_sts_dev_spearman"
) -> Path | None:
    """Training loss and each logged term (``loss_*``) per step; the dev metric in a second panel."""
    loss_keys = sorted({key for entry in log_history for key in entry if key == "loss" or key.startswith("loss_")})
    if not loss_keys:
        return None
    has_dev = any(dev_metric in entry for entry in log_history)
    figure, axes = plt.subplots(1, 2 if has_dev else 1, figsize=(11 if has_dev else 6, 4), squeeze=False)
    for key in loss_keys:
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry]
        axes[0][0].plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
    axes[0][0].set(xlabel="step", ylabel="loss", title="training loss terms")
    axes[0][0].legend()
    if has_dev:
        points = [(entry["step"], entry[dev_metric]) for entry in log_history if dev_metric in entry]
        axes[0][1].plot(*zip(*points), marker="o", color="tab:green")
        axes[0][1].set(xlabel="step", ylabel="Spearman ×100", title="STS-B dev (model selection)")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_layer_dim_heatmap(
    scores: Sequence[Sequence[float]], layers: Sequence[int], dims: Sequence[int], path: str | Path, title: str
) -> Path:
    """Heatmap of a layer x dim grid (``scores[i][j]`` = layer ``layers[i]``, dim ``dims[j]``), values in the cells.

    Layers run up the y axis (deepest on top), dims along x.
    """
    values = np.asarray(scores, dtype=float)
    width = max(5.0, 2.0 + 0.9 * len(dims))
    figure, axes = plt.subplots(figsize=(width, 1.8 + 0.5 * len(layers)))
    image = axes.imshow(values, origin="lower", aspect="auto", cmap="viridis")
    low, high = np.nanmin(values), np.nanmax(values)
    for i in range(len(layers)):
        for j in range(len(dims)):
            light = high > low and (values[i, j] - low) / (high - low) > 0.6
            axes.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=9,
                      color="black" if light else "white")
    axes.set_xticks(range(len(dims)), [str(dim) for dim in dims])
    axes.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    axes.set(xlabel="embedding dims kept", ylabel="transformer layer")
    axes.set_title(textwrap.fill(title, width=int(width * 11)), fontsize=9)
    figure.colorbar(image, ax=axes, label="Spearman ×100")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
