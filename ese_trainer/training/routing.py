"""The training-time routing tally: per routed layer, each expert's share of the routed tokens and the routing
entropy, summed over a logging window and logged (the files written after training: :mod:`routing_report`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
