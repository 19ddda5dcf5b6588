"""The Starbucks schedule: a fixed small-to-large list of (layer, dims) slices, every one trained every step.

Starbucks (Zhuang et al., *Starbucks: Improved Training for 2D Matryoshka Embeddings*, arXiv 2410.13230) found
that 2D Matryoshka training's weakness is sampling one random (layer, dim) per step; training a fixed list of
sizes — BERT-base: (2, 32) (4, 64) (6, 128) (8, 256) (10, 512) (12, 768) — with the same loss at every step brings
the small slices close to models trained at each size alone. With ``e_ℓ^d`` the first ``d`` dims of the pooled
``hidden_states[ℓ]``, ``P`` the slices trained this step (the full slice ``(n, D)`` aside: it is the trainer's main
loss) and ``w_s`` each slice's weight::

    loss_ese_starbucks            = c · Σ_{s=(ℓ,d) ∈ P} w_s L_sim(e_ℓ^d)
    loss_ese_starbucks_distill    = c · Σ_{s ∈ P, d < D} w_s L_dist(e_ℓ^d, t_ℓ^d)              (optional)
    loss_ese_starbucks_similarity = c · Σ_{s ∈ P} w_s KL(softmax(sg(cos e_n)/τ) ‖ softmax(cos e_ℓ^d/τ))  (optional)

    loss_ese = loss_ese_starbucks + starbucks_distill_weight · loss_ese_starbucks_distill
             + starbucks_similarity_weight · loss_ese_starbucks_similarity

``L_sim`` is the trainer's pair loss. The distillation pulls a slice toward the compression target of its own layer
cut to ``d`` dims (:func:`pca_target`, detached), ESE's idea. The similarity term
(:func:`~ese_trainer.ese.distillation.similarity_distillation_loss`) pulls each slice's in-batch similarity rows
toward the full model's (detached), as Starbucks' own fine-tuning code does. The options, every one off by default
(the published schedule):

- **ladder** (``starbucks_ladder``/``starbucks_pairs``): the diagonal (:func:`default_diagonal`), the whole ``grid``
  of the diagonal's layers x its dims (every layer also trained at every smaller and larger width of the ladder), or
  an explicit list;
- **slices per step** (``starbucks_slices_per_step``): ``0`` trains every slice every step (Starbucks); ``k`` a
  random ``k`` of them (2DMSE's sampling, Starbucks' ``n_selections_per_step``), drawn from the step count (every
  process draws the same, a resumed run what the uninterrupted one would) and scaled by ``c = m/k`` (``m`` slices
  in the ladder) so the expected loss equals the full ladder's; ``c = 1`` otherwise;
- **per-slice weights** (``starbucks_weights``): ``w_s = 1`` (Starbucks, as sentence-transformers'
  ``MatryoshkaLoss`` with ``matryoshka_weights=None``); one number per slice; or a layer-weighting scheme
  (:func:`~ese_trainer.ese.layer_weights.layer_weight` of the slice's layer) rescaled to mean 1 over the slices, so
  it moves emphasis between slices without changing the total.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from ese_trainer.ese.distillation import distillation_loss, similarity_distillation_loss
from ese_trainer.ese.layer_weights import LAYER_WEIGHTINGS, layer_weight

STARBUCKS = "loss_ese_starbucks"
STARBUCKS_DISTILL = "loss_ese_starbucks_distill"
STARBUCKS_SIMILARITY = "loss_ese_starbucks_similarity"
MAX_DEFAULT_SLICES = 6
LADDERS = ("diagonal", "grid")
Slice = tuple[int, int]


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


def ladder_slices(values: Sequence[str] | None, ladder: str, num_layers: int, hidden_size: int) -> list[Slice]:
    """The slices of a run: ``values`` (``starbucks_pairs``) when given, else the ``ladder``: ``diagonal``
    (:func:`default_diagonal`) or ``grid`` (every layer of the diagonal at every dims of the diagonal; for
    all-MiniLM-L6-v2's first 3 layers (1, 128) (1, 256) (1, 384) (2, 128) … (3, 384)). Sorted small to large."""
    if ladder not in LADDERS:
        raise ValueError(f"starbucks_ladder must be one of {LADDERS}, got {ladder!r}")
    if values:
        if ladder != "diagonal":
            raise ValueError("set starbucks_pairs or starbucks_ladder, not both")
        return parse_slices(values, num_layers, hidden_size)
    diagonal = default_diagonal(num_layers, hidden_size)
    if ladder == "diagonal":
        return diagonal
    return sorted({(layer, dim) for layer, _ in diagonal for _, dim in diagonal})


def trained_slices(slices: Sequence[Slice], num_layers: int, hidden_size: int) -> list[Slice]:
    """The slices the ESE terms train: all but the full one ``(n, D)``, which is the trainer's main loss."""
    return [piece for piece in slices if piece != (num_layers, hidden_size)]


def parse_weights(values: Sequence[str | float] | None) -> str | list[float] | None:
    """``starbucks_weights`` as given: None, a layer-weighting scheme name, or non-negative finite numbers."""
    if not values:
        return None
    if len(values) == 1 and str(values[0]) in LAYER_WEIGHTINGS:
        return str(values[0])
    numbers = []
    for value in values:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"starbucks_weights: {value!r} is neither a number nor one of "
                             f"{LAYER_WEIGHTINGS}") from None
        if not (math.isfinite(number) and number >= 0):
            raise ValueError(f"starbucks_weights: {value!r} must be a finite number >= 0")
        numbers.append(number)
    if not any(numbers):
        raise ValueError("starbucks_weights: every weight is 0 (to train no slice, disable ESE)")
    return numbers


def slice_weights(values: Sequence[str | float] | None, trained: Sequence[Slice],
                  num_layers: int) -> dict[Slice, float]:
    """``w_s`` of each trained slice: 1 (no ``values``); the numbers in the slices' small-to-large order; or a scheme's
    weight of the slice's layer rescaled so that the weights average 1."""
    weights = parse_weights(values)
    if weights is None:
        return {piece: 1.0 for piece in trained}
    if isinstance(weights, str):
        raw = [layer_weight(layer, weights, num_layers) for layer, _ in trained]
        return {piece: len(raw) * value / sum(raw) for piece, value in zip(trained, raw)}
    if len(weights) != len(trained):
        names = " ".join(f"{layer}x{dim}" for layer, dim in trained)
        raise ValueError(f"starbucks_weights: {len(trained)} value(s) for the slices {names} (the full slice is the "
                         f"main loss), got {len(weights)}")
    return dict(zip(trained, weights))


def draw_slices(trained: Sequence[Slice], per_step: int, step: int) -> list[Slice]:
    """``per_step`` of the ``trained`` slices (all when 0 or more than there are), drawn from ``step`` alone: the same
    on every process and after a resume."""
    if not 0 < per_step < len(trained):
        return list(trained)
    generator = torch.Generator().manual_seed(step)
    chosen = torch.randperm(len(trained), generator=generator)[:per_step].sort().values.tolist()
    return [trained[index] for index in chosen]


def starbucks_terms(
    layer_embeddings: Mapping[int, Tensor],
    slices: Sequence[Slice],
    num_layers: int,
    pair_loss: Callable[[Tensor], Tensor],
    distill_weight: float = 0.0,
    kl_temperature: float = 1.0,
    target: Callable[[int, Tensor, int], Tensor] | None = None,
    weights: Mapping[Slice, float] | None = None,
    scale: float = 1.0,
    similarity_weight: float = 0.0,
    similarity_temperature: float = 0.05,
) -> dict[str, Tensor]:
    """The terms of the module docstring for ``slices`` (those trained this step; the full one is skipped).
    ``layer_embeddings`` maps layer ℓ to the embeddings of every text of the batch (``N x D``; layer ``n`` is the full
    model, the similarity term's teacher); ``pair_loss`` is the trainer's loss of ``N x d`` embeddings of those texts;
    ``target(ℓ, N x D, d)`` returns ``t_ℓ^d`` (detached), needed when ``distill_weight`` is not 0; ``weights`` maps a
    slice to ``w_s`` (1 when absent); ``scale`` is ``c``."""
    hidden = next(iter(layer_embeddings.values())).shape[-1]
    trained = trained_slices(slices, num_layers, hidden)
    if not trained:
        return {}
    weight = {piece: (weights or {}).get(piece, 1.0) for piece in trained}
    terms = {STARBUCKS: scale * sum(weight[(layer, dim)] * pair_loss(layer_embeddings[layer][:, :dim])
                                    for layer, dim in trained)}
    distilled = [(layer, dim) for layer, dim in trained if dim < hidden]
    if distill_weight and distilled:
        total = 0.0
        for layer, dim in distilled:
            stacked = layer_embeddings[layer]
            parts = distillation_loss(stacked[:, :dim], target(layer, stacked, dim).detach(), kl_temperature)
            total = total + weight[(layer, dim)] * (parts["mse"] + parts["kl"])
        terms[STARBUCKS_DISTILL] = scale * total
    if similarity_weight:
        teacher = layer_embeddings[num_layers]
        terms[STARBUCKS_SIMILARITY] = scale * sum(
            weight[(layer, dim)] * similarity_distillation_loss(layer_embeddings[layer][:, :dim], teacher,
                                                                similarity_temperature)
            for layer, dim in trained)
    return terms
