"""What a training logging window records: each loss term's values and the routing tallies, reduced over
processes when the window is logged."""

from __future__ import annotations

from collections import defaultdict

import torch
from accelerate import Accelerator

from ese_trainer.training.objective import ESE_HEAD_ROUTING, MOE_ROUTING, ObjectiveOutput
from ese_trainer.training.routing import RoutingTally
from ese_trainer.training.training_model import TrainingModel


def routing_tallies(model: TrainingModel) -> dict[str, RoutingTally]:
    """A tally for each routed component of ``model``: the MoE encoder's layers, ESE's learned target heads."""
    tallies = {}
    config = model.config
    if getattr(config, "moe_layer_indices", None):
        tallies[MOE_ROUTING] = RoutingTally(config.moe_layer_indices, config.num_experts, config.num_experts_per_tok,
                                            MOE_ROUTING)
    ese = model.objective.ese_loss
    if ese is not None and ese.heads:
        tallies[ESE_HEAD_ROUTING] = RoutingTally(ese.layers, ese.settings.head_num_experts,
                                                 ese.settings.head_top_k, ESE_HEAD_ROUTING)
    return tallies


class TermRecorder:
    """Accumulates, per logging window, every term of each training step and the routing tallies.

    :meth:`logs` returns the window's mean of each term (averaged over processes too) and the tallies' shares and
    entropies (summed over processes), then starts a new window.
    """

    def __init__(self, tallies: dict[str, RoutingTally]) -> None:
        self.tallies = tallies
        self.terms: dict[str, list[torch.Tensor]] = defaultdict(list)

    @property
    def pending(self) -> bool:
        return bool(self.terms)

    def add(self, output: ObjectiveOutput) -> None:
        for name, value in output.terms.items():
            self.terms[name].append(value.detach())
        for name, router_logits in (output.routing or {}).items():
            self.tallies[name].add(router_logits)

    def logs(self, accelerator: Accelerator) -> dict[str, float]:
        logs = {}
        for name, values in self.terms.items():
            mean = torch.stack(values).float().mean()
            logs[name] = round(accelerator.reduce(mean, reduction="mean").item(), 6)
        self.terms.clear()
        for tally in self.tallies.values():
            summed = accelerator.reduce(tally.as_tensor().to(accelerator.device), reduction="sum")
            logs.update(tally.logs(summed))
            tally.reset()
        return logs
