"""Distillation terms: ESE's of a layer's first ``k`` dims toward its compression target (MSE + temperature-scaled
KL), and Starbucks' of a slice's in-batch similarities toward the full model's."""

from __future__ import annotations

import math

import torch
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
    The target is used as given; callers pass a detached one (see :func:`ese_trainer.ese.loss.ese_terms`).
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


def similarity_distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``KL(softmax(T_i/τ) ‖ softmax(S_i/τ))`` averaged over rows: a slice's in-batch similarities toward the full
    model's, the teacher detached.

    ``student`` (``N x d``) and ``teacher`` (``N x D``) embed the same ``N`` texts; ``S = cos(student, student)`` and
    ``T = sg(cos(teacher, teacher))`` are their ``N x N`` cosine matrices with the diagonal (a text against itself)
    left out of every row's softmax. The loss is the mean over the ``N`` rows of each row's KL, so each text's
    distribution over the batch's other texts under the slice is pulled toward the full model's (0 for a batch of one or
    two texts: no choice to distil). Computed in float32.

    Source: Starbucks' own fine-tuning code (ielab/Starbucks, ``retrieval/modeling.py``, ``SrlDenseModel.forward``):
    each (layer, dims) sub-model's in-batch score matrix, divided by the contrastive temperature, is matched to the
    full model's **detached** scores by ``F.kl_div(log_softmax(sub / τ), softmax(full.detach() / τ),
    reduction="batchmean")``; there queries score passages, here every text of the batch scores every other one.
    No ``τ²`` factor: the scores are cosines divided by a small ``τ`` (contrastive logits, as the in-batch term's
    scale), not logits softened by a ``τ > 1`` as in Hinton et al., and Starbucks adds none. The teacher is detached,
    unlike the 2-D loss sentence-transformers #3757 found (its KL toward the last layer back-propagated into it).
    """
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(f"expected N x d student and N x D teacher embeddings of the same N texts, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    if student.shape[0] < 2:  # no other text to compare with: nothing to distil (2 texts: one choice each, KL 0)
        return student.float().sum() * 0.0
    self_pairs = torch.eye(student.shape[0], dtype=torch.bool, device=student.device)

    def log_probabilities(embeddings: Tensor) -> Tensor:
        normalised = F.normalize(embeddings.float(), dim=-1)
        logits = (normalised @ normalised.T / temperature).masked_fill(self_pairs, float("-inf"))
        return F.log_softmax(logits, dim=-1).masked_fill(self_pairs, 0.0)

    with torch.no_grad():
        target = log_probabilities(teacher.detach())
    student_log = log_probabilities(student)
    # Σ_j p_ij (ln p_ij − ln q_ij) per row; the diagonal is 0 in both (masked), so it adds nothing
    return (target.exp() * (target - student_log)).masked_fill(self_pairs, 0.0).sum(dim=-1).mean()
