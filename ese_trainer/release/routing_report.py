"""Expert utilisation after training: every logged window of the routing tallies (:mod:`ese_trainer.training.routing`),
saved as ``<name>.json`` and plotted as ``<name>.png``."""

from __future__ import annotations

import re
from pathlib import Path

from ese_trainer.losses.load_balancing import dead_experts
from ese_trainer.release.run_io import save_json


def utilisation_history(log_history: list[dict], prefix: str = "moe") -> list[dict]:
    """The logged utilisation of every training logging step: ``[{step, layers: {layer: {shares, entropy}}}]``."""
    util_pattern = re.compile(rf"^{prefix}_util/layer_(\d+)/expert_(\d+)$")
    entropy_pattern = re.compile(rf"^{prefix}_entropy/layer_(\d+)$")
    history = []
    for entry in log_history:
        layers: dict[str, dict] = {}
        for key, value in entry.items():
            if match := util_pattern.match(key):
                layer, expert = match.groups()
                shares = layers.setdefault(layer, {"shares": {}, "entropy": None})["shares"]
                shares[int(expert)] = value
            elif match := entropy_pattern.match(key):
                layers.setdefault(match.group(1), {"shares": {}, "entropy": None})["entropy"] = value
        if layers:
            for layer in layers.values():
                layer["shares"] = [layer["shares"][expert] for expert in sorted(layer["shares"])]
            ordered = dict(sorted(layers.items(), key=lambda item: int(item[0])))
            history.append({"step": entry.get("step"), "layers": ordered})
    return history


def save_expert_utilisation(log_history: list[dict], output_dir: str | Path, num_experts: int,
                            top_k: int, prefix: str = "moe", name: str = "expert_utilisation") -> dict | None:
    """Write ``<name>.json`` (every logged window; ``final`` = the last one; ``min_share``; ``dead_experts`` per
    layer in the last one, :func:`~ese_trainer.losses.load_balancing.dead_experts`) and ``<name>.png``
    (share per layer and expert over training). None when nothing was logged."""
    history = utilisation_history(log_history, prefix)
    if not history:
        return None
    final = history[-1]
    summary = {
        "num_experts": num_experts,
        "num_experts_per_tok": top_k,
        "balanced_share": 1 / num_experts,
        "final": final,
        "min_share": min(min(layer["shares"]) for layer in final["layers"].values()),
        "dead_experts": {layer: dead_experts(values["shares"]) for layer, values in final["layers"].items()},
        "history": history,
    }
    output_dir = Path(output_dir)
    save_json(output_dir / f"{name}.json", summary)
    plot_expert_utilisation(history, num_experts, output_dir / f"{name}.png")
    return summary


def plot_expert_utilisation(history: list[dict], num_experts: int, path: str | Path) -> Path:
    """One panel per MoE layer: each expert's share of the routed tokens over the training steps, with the
    balanced share ``1/E`` dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(history[-1]["layers"])
    columns = min(3, len(layers))
    rows = -(-len(layers) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False, sharey=True)
    steps = [entry["step"] for entry in history]
    for position, layer in enumerate(layers):
        axis = axes[position // columns][position % columns]
        for expert in range(num_experts):
            shares = [entry["layers"].get(layer, {"shares": [None] * num_experts})["shares"][expert]
                      for entry in history]
            axis.plot(steps, shares, label=f"expert {expert}")
        axis.axhline(1 / num_experts, color="grey", linestyle="--", linewidth=1)
        axis.set(title=f"layer {layer}", xlabel="step", ylabel="share of routed tokens")
    for position in range(len(layers), rows * columns):
        axes[position // columns][position % columns].axis("off")
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
