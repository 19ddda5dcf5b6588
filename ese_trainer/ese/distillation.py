"""ESE's distillation of a layer's first ``k`` dims toward its compression target (MSE + temperature-scaled KL)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def distillation_loss(student: Tensor, target: Tensor, temperature: float) -> dict[str, Tensor]:
    """``{"mse": MSE(s, t), "kl": τ² · KL(softmax(t/τ) ‖ softmax(s/τ))}`` for ``B x k`` student and target.

    ``MSE`` is the mean over all ``B·k`` entries; the softmax runs over the ``k`` dims of each row and the KL is
    averaged over the ``B`` rows (``batchmean``)::

        kl = τ²/B · Σ_i Σ_j p_ij (ln p_ij − ln q_ij),   p_i = softmax(t_i / τ),  q_i = softmax(s_i / τ)

    The ``τ²`` factor is Hinton et al. (2015, "Distilling the Knowledge in a Neural Network", §2): the gradient
    of the softened KL scales as ``1/τ²``, so multiplying by ``τ²`` keeps its magnitude independent of ``τ``.
    AnglE's ESE scales by ``τ`` (a known defect: its KL gradient shrinks as ``1/τ``). Computed in float32.
    The target is used as given; callers pass a detached one (see :func:`ese_trainer.ese.ese_terms`).
    """
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if student.dim() != 2 or student.shape != target.shape:
        raise ValueError(
            f"expected B x k student and target of equal shape, got {tuple(student.shape)} and {tuple(target.shape)}"
        )
    student, target = student.float(), target.float()
    kl = F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(target / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return {"mse": F.mse_loss(student, target), "kl": temperature**2 * kl}
