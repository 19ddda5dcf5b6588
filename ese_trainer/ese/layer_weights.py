"""Per-layer weights of ESE's student (prior-layer) terms.

Layers are numbered as in ``hidden_states`` of a Hugging Face encoder with ``n`` transformer layers:
``hidden_states[0]`` is the embedding-layer output (not a transformer layer, never a student) and
``hidden_states[ℓ]`` is the output of transformer layer ``ℓ``; the last layer ``n`` is the teacher, so the
students are ``ℓ = 1..n−1`` — the same layers the layer x dimension evaluation reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LAYER_WEIGHTINGS = ("uniform", "log", "linear")


def layer_weights(student_layers: Sequence[int], scheme: str, num_layers: int | None = None) -> dict[int, float]:
    """Weight ``w_ℓ`` of each student layer ``ℓ`` (1-based transformer layer, ``1 ≤ ℓ ≤ n−1``).

    - ``uniform``: ``w_ℓ = 1``.
    - ``log``: ``w_ℓ = 1 / (1 + ln(1 + ℓ))`` — the weight AnglE's ``AngleESETrainer`` gives ``hidden_states[ℓ]``
      (Li et al., ESE, arXiv 2402.14776); shallower layers count more.
    - ``linear``: ``w_ℓ = ℓ / n`` — deeper layers, closer to the teacher, count more; needs ``num_layers``.

    ``num_layers`` (``n``), when given, also bounds the layers to ``1..n−1``. Layer 0 (the embedding output)
    is rejected. The weights are not normalised; :func:`ese_trainer.ese.ese_terms` divides by ``Σ_ℓ w_ℓ``.
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
    if scheme == "uniform":
        return {layer: 1.0 for layer in student_layers}
    if scheme == "log":
        return {layer: 1.0 / (1.0 + math.log(1.0 + layer)) for layer in student_layers}
    if num_layers is None:
        raise ValueError("the 'linear' layer weighting needs num_layers (w_l = l / num_layers)")
    return {layer: layer / num_layers for layer in student_layers}
