"""Plots saved next to a run's results."""

from __future__ import annotations

from pathlib import Path

import matplotlib

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
