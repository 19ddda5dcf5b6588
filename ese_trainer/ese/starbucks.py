"""The Starbucks schedule: a fixed small-to-large list of (layer, dims) slices, every one trained every step.

Starbucks (Zhuang et al., *Starbucks: Improved Training for 2D Matryoshka Embeddings*, arXiv 2410.13230) found
that 2D Matryoshka training's weakness is sampling one random (layer, dim) per step; training a fixed list of
sizes — BERT-base: (2, 32) (4, 64) (6, 128) (8, 256) (10, 512) (12, 768) — with the same loss at every step brings
the small slices close to models trained at each size alone. With ``e_ℓ^d`` the first ``d`` dims of the pooled
``hidden_states[ℓ]``::

    loss_ese_starbucks         = Σ_{(ℓ, d) ∈ P, (ℓ, d) ≠ (n, D)} L_sim(e_ℓ^d)
    loss_ese_starbucks_distill = Σ_{(ℓ, d) ∈ P, d < D} L_dist(e_ℓ^d, t_ℓ^d)       (optional)

``L_sim`` is the trainer's pair loss; the full slice ``(n, D)`` is its main loss already. The distillation pulls a
slice toward the compression target of its own layer cut to ``d`` dims (:func:`pca_target`, detached), ESE's
idea, with ``starbucks_distill_weight`` (0 = Starbucks as published, which distils toward the last layer's
embedding with a KL instead; we leave that out).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from torch import Tensor

from ese_trainer.ese.distillation import distillation_loss

STARBUCKS = "loss_ese_starbucks"
STARBUCKS_DISTILL = "loss_ese_starbucks_distill"
MAX_DEFAULT_SLICES = 6


def default_diagonal(num_layers: int, hidden_size: int) -> list[tuple[int, int]]:
    """Starbucks' list scaled to a model: ``m = min(n, 6)`` slices at evenly spaced layers ending at ``n``, the
    dims halving from ``2D/3`` down (rounded to 8) with the last slice at full width ``D``.

    BERT-base (12 x 768) gives Starbucks' own list (2, 32) … (10, 512) (12, 768); all-MiniLM-L6-v2 (6 x 384)
    gives (1, 16) (2, 32) (3, 64) (4, 128) (5, 256) (6, 384); its 3-layer cut (1, 128) (2, 256) (3, 384).
    """
    count = min(num_layers, MAX_DEFAULT_SLICES)
    slices = []
    for index in range(1, count + 1):
        layer = round(index * num_layers / count)
        dim = hidden_size if index == count else max(8, round(2 * hidden_size / 3 / 2 ** (count - 1 - index) / 8) * 8)
        slices.append((layer, min(dim, hidden_size)))
    return slices


def parse_slices(values: Sequence[str] | None, num_layers: int, hidden_size: int) -> list[tuple[int, int]]:
    """``["2x32", "4x64", ...]`` (layer x dims) checked against the model, or the default diagonal; sorted
    small to large."""
    if not values:
        return default_diagonal(num_layers, hidden_size)
    slices = []
    for value in values:
        match = re.fullmatch(r"\s*(\d+)\s*[xX:]\s*(\d+)\s*", str(value))
        if not match:
            raise ValueError(f"starbucks_pairs: {value!r} is not LAYERxDIMS (e.g. 2x32)")
        layer, dim = int(match.group(1)), int(match.group(2))
        if not 1 <= layer <= num_layers or not 1 <= dim <= hidden_size:
            raise ValueError(f"starbucks_pairs: {value!r} is outside layers 1..{num_layers} x dims 1..{hidden_size}")
        slices.append((layer, dim))
    if len(set(slices)) != len(slices):
        raise ValueError(f"starbucks_pairs: {list(values)} repeats a slice")
    return sorted(slices)


def starbucks_terms(
    layer_embeddings: Mapping[int, Tensor],
    slices: Sequence[tuple[int, int]],
    num_layers: int,
    pair_loss: Callable[[Tensor], Tensor],
    distill_weight: float = 0.0,
    kl_temperature: float = 1.0,
    target: Callable[[int, Tensor, int], Tensor] | None = None,
) -> dict[str, Tensor]:
    """The terms of the module docstring. ``layer_embeddings`` maps layer ℓ to the embeddings of every text of the
    batch (``N x D``); ``pair_loss`` is the trainer's loss of ``N x d`` embeddings of those texts; ``target(ℓ, N x D,
    d)`` returns ``t_ℓ^d`` (detached), needed when ``distill_weight`` is not 0."""
    hidden = next(iter(layer_embeddings.values())).shape[-1]
    trained = [(layer, dim) for layer, dim in slices if (layer, dim) != (num_layers, hidden)]
    if not trained:
        return {}
    terms = {STARBUCKS: sum(pair_loss(layer_embeddings[layer][:, :dim]) for layer, dim in trained)}
    distilled = [(layer, dim) for layer, dim in trained if dim < hidden]
    if distill_weight and distilled:
        total = 0.0
        for layer, dim in distilled:
            stacked = layer_embeddings[layer]
            parts = distillation_loss(stacked[:, :dim], target(layer, stacked, dim).detach(), kl_temperature)
            total = total + parts["mse"] + parts["kl"]
        terms[STARBUCKS_DISTILL] = total
    return terms
