"""The dev score of an ESE run: every trained (layer, dims) slice's Spearman, and their mean, from the evaluation pass.

An ESE run trains several slices of one encoder (Espresso, Li et al., arXiv 2402.14776: every layer and its leading
``k`` dims; Starbucks, Zhuang et al., arXiv 2410.13230: a diagonal of (layer, dims) slices), so choosing its
checkpoint by the full model alone can pick one whose small slices are worse. Slice ``(ℓ, d)`` embeds a text as the
masked pooling of ``hidden_states[ℓ]`` cut to its first ``d`` dims — the cell ``(ℓ, d)`` of
:func:`ese_trainer.evaluation.layer_grid.evaluate_layer_dim_grid` — and scores the dev pairs by::

    spearman_ℓ,d = 100 · ρ_Spearman( cos(a_i[:d], b_i[:d]), gold_i )        over every dev pair i
    slices_spearman = (1 / |S|) · Σ_{(ℓ,d) ∈ S} spearman_ℓ,d                S: the run's trained slices

The evaluation pass already pools the layers the ESE terms need, so no extra forward is run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ese_trainer.evaluation.sts import spearman


class PairEmbeddings(Protocol):
    """The two sides of a batch's scored pairs (``P x D`` each), e.g.
    :class:`~ese_trainer.training.objective.ScoredPairs`."""

    emb_a: Tensor
    emb_b: Tensor


class SliceSpearman:
    """Spearman x100 of every slice in ``slices`` (``(layer, dims)``; layer ``num_layers`` is the last one), and
    their mean, accumulated over evaluation batches. Logged as ``eval_<name>_slice_<ℓ>x<d>_spearman`` and
    ``eval_<name>_slices_spearman`` (the mean: ``metric_for_best_model: <name>_slices_spearman``)."""

    def __init__(self, slices: Sequence[tuple[int, int]], num_layers: int, name: str = "sts_dev") -> None:
        if not slices:
            raise ValueError("SliceSpearman needs at least one (layer, dims) slice")
        self.slices, self.num_layers, self.name = [tuple(piece) for piece in slices], num_layers, name
        self.metric = f"{name}_slices_spearman"
        self.reset()

    def slice_metric(self, layer: int, dim: int) -> str:
        return f"{self.name}_slice_{layer}x{dim}_spearman"

    def reset(self) -> None:
        self.cosines: list[Tensor] = []
        self.scores: list[Tensor] = []

    @torch.no_grad()
    def pair_cosines(self, last: PairEmbeddings, layers: Mapping[int, PairEmbeddings]) -> Tensor:
        """``P x |S|``: each pair's cosine in every slice; ``last`` holds the last layer's pairs, ``layers`` the
        shallower layers' (pooled ``hidden_states[ℓ]``)."""
        columns = []
        for layer, dim in self.slices:
            pairs = last if layer == self.num_layers else layers.get(layer)
            if pairs is None:
                raise ValueError(f"slice {layer}x{dim}: the evaluation pass did not pool layer {layer} "
                                 f"(pooled: {sorted(layers)})")
            columns.append(F.cosine_similarity(pairs.emb_a[:, :dim].float(), pairs.emb_b[:, :dim].float(), dim=-1))
        return torch.stack(columns, dim=1)

    def add(self, cosines: Tensor, scores: Tensor) -> None:
        self.cosines.append(cosines.detach().float().cpu())
        self.scores.append(scores.detach().float().cpu())

    def compute(self) -> dict[str, float]:
        if not self.cosines:
            raise ValueError(f"{self.metric}: no evaluation batch was seen")
        cosines, gold = torch.cat(self.cosines), torch.cat(self.scores).tolist()
        values = {self.slice_metric(layer, dim): spearman(cosines[:, column].tolist(), gold)
                  for column, (layer, dim) in enumerate(self.slices)}
        values[self.metric] = sum(values.values()) / len(values)
        return values
