"""Per-layer weights of ESE's student (prior-layer) terms.

Layers are numbered as in ``hidden_states`` of a Hugging Face encoder with ``n`` transformer layers:
``hidden_states[0]`` is the embedding-layer output (not a transformer layer, never a student) and
``hidden_states[ℓ]`` is the output of transformer layer ``ℓ``; the last layer ``n`` is the teacher, so the
students are ``ℓ = 1..n−1`` — the same layers the layer x dimension evaluation reports. This is the index
sentence-transformers' ``AdaptiveLayerLoss`` weights too (its ``layer_idx`` 0 is the embedding output), so a scheme
of the same name gives a layer the same weight there and here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LAYER_WEIGHTINGS = ("uniform", "log", "linear", "depth")


def layer_weight(layer: int, scheme: str, num_layers: int | None = None) -> float:
    """``w_ℓ`` of ``hidden_states[ℓ]`` under ``scheme`` (unchecked; :func:`layer_weights` validates).

    The first three are sentence-transformers' ``AdaptiveLayerLoss.get_layer_weight`` (6.x,
    ``sentence_transformer/losses/adaptive_layer.py``; its issue #3757 noted that 2DMSE, ESE and Starbucks weight
    layers differently):

    - ``uniform``: ``w_ℓ = 1`` (2DMSE and Starbucks);
    - ``log``: ``w_ℓ = 1 / (1 + ln(1 + ℓ))`` (ESE, Li et al., arXiv 2402.14776 v2; AnglE's ``AngleESETrainer``);
    - ``linear``: ``w_ℓ = 1 / (1 + ℓ)`` (``AdaptiveLayerLoss`` before it had the option);

    and ours: ``depth``: ``w_ℓ = ℓ / n`` — deeper layers, closer to the teacher, count more (needs ``num_layers``).
    ``uniform``, ``log`` and ``linear`` favour the shallow layers, ``depth`` the deep ones.
    """
    if scheme == "uniform":
        return 1.0
    if scheme == "log":
        return 1.0 / (1.0 + math.log(1.0 + layer))
    if scheme == "linear":
        return 1.0 / (1.0 + layer)
    if scheme == "depth":
        if num_layers is None:
            raise ValueError("the 'depth' layer weighting needs num_layers (w_l = l / num_layers)")
        return layer / num_layers
    raise ValueError(f"unknown layer weighting {scheme!r}; choose one of {', '.join(LAYER_WEIGHTINGS)}")


def layer_weights(student_layers: Sequence[int], scheme: str, num_layers: int | None = None) -> dict[int, float]:
    """Weight ``w_ℓ`` of each student layer ``ℓ`` (1-based transformer layer, ``1 ≤ ℓ ≤ n−1``).

    ``uniform``, ``log`` (ESE's, the default), ``linear`` or ``depth``: :func:`layer_weight`.

    ``num_layers`` (``n``), when given, also bounds the layers to ``1..n−1``. Layer 0 (the embedding output)
    is rejected. The weights are not normalised; :func:`ese_trainer.ese.loss.ese_terms` divides by ``Σ_ℓ w_ℓ``.
    """
    if scheme not in LAYER_WEIGHTINGS:
        raise ValueError(f"unknown layer weighting {scheme!r}; choose one of {', '.join(LAYER_WEIGHTINGS)}")
    if num_layers is not None and num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if len(set(student_layers)) != len(student_layers):
        raise ValueError(f"duplicate student layers in {list(student_layers)}")
    for layer in student_layers:
        if layer < 1:
            raise ValueError(
                f"student layer {layer} is not a transformer layer: students are hidden_states[1..n-1]; "
                "hidden_states[0] is the embedding-layer output"
            )
        if num_layers is not None and layer > num_layers - 1:
            raise ValueError(f"student layer {layer} outside 1..{num_layers - 1} (layer {num_layers} is the teacher)")
    return {layer: layer_weight(layer, scheme, num_layers) for layer in student_layers}
