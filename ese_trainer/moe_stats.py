"""Expert utilisation of an MoE encoder: per layer, the share of routed tokens each expert gets and the
routing entropy; accumulated over a logging window, logged, and saved as ``expert_utilization.json`` + PNG."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

from ese_trainer.run_io import save_json

UTIL_KEY = "{prefix}_util/layer_{layer}/expert_{expert}"
ENTROPY_KEY = "{prefix}_entropy/layer_{layer}"


class RoutingTally:
    """Sums, over the batches of a logging window, each MoE layer's top-k assignments per expert, the
    router entropy ``-Σ_e p_e log p_e`` and the number of (non-padding) tokens."""

    def __init__(self, layer_indices: list[int], num_experts: int, top_k: int, prefix: str = "moe") -> None:
        self.prefix = prefix
        self.layer_indices = layer_indices
        self.num_experts = num_experts
        self.top_k = top_k
        self.reset()

    def reset(self) -> None:
        self.assignments = torch.zeros(len(self.layer_indices), self.num_experts, dtype=torch.float64)
        self.entropy = torch.zeros(len(self.layer_indices), dtype=torch.float64)
        self.tokens = torch.zeros(len(self.layer_indices), dtype=torch.float64)

    @torch.no_grad()
    def add(self, router_logits: tuple[torch.Tensor, ...]) -> None:
        for position, logits in enumerate(router_logits):
            probs = F.softmax(logits.detach().float(), dim=-1)
            selected = probs.topk(self.top_k, dim=-1).indices.reshape(-1)
            self.assignments[position] += torch.bincount(selected, minlength=self.num_experts).double().cpu()
            self.entropy[position] += -(probs * probs.clamp_min(1e-12).log()).sum().double().cpu()
            self.tokens[position] += logits.shape[0]

    def as_tensor(self) -> torch.Tensor:
        """Everything in one flat tensor, so processes can sum their tallies with one all-reduce."""
        return torch.cat([self.assignments.flatten(), self.entropy, self.tokens])

    def logs(self, summed: torch.Tensor | None = None) -> dict[str, float]:
        """Per layer and expert the share of top-k assignments, and the mean routing entropy (nats)."""
        flat = (summed if summed is not None else self.as_tensor()).double().cpu()
        layers = len(self.layer_indices)
        assignments = flat[: layers * self.num_experts].view(layers, self.num_experts)
        entropy, tokens = flat[layers * self.num_experts: -layers], flat[-layers:]
        logs = {}
        for position, layer in enumerate(self.layer_indices):
            if tokens[position] == 0:
                continue
            shares = assignments[position] / assignments[position].sum()
            for expert, share in enumerate(shares.tolist()):
                logs[UTIL_KEY.format(prefix=self.prefix, layer=layer, expert=expert)] = round(share, 5)
            mean_entropy = (entropy[position] / tokens[position]).item()
            logs[ENTROPY_KEY.format(prefix=self.prefix, layer=layer)] = round(mean_entropy, 5)
        return logs


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
                            top_k: int, prefix: str = "moe", name: str = "expert_utilization") -> dict | None:
    """Write ``<name>.json`` (every logged window; ``final`` = the last one; ``min_share``) and ``<name>.png``
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
