"""AnglE: the CoSENT ranking over angle differences in complex space."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ese_trainer.losses._checks import check_pair_inputs
from ese_trainer.losses.cosent import ranking_loss


def angle_similarity(emb_a: Tensor, emb_b: Tensor) -> Tensor:
    """Pairwise AnglE similarity ``|cos(a, b) + sin(a, b)|``.

    Each embedding is read as a complex vector whose real part is its first half and imaginary part its second
    half (an odd dimension is zero-padded). After L2 normalisation the complex division ``a / b`` has real part
    ``Σ a_re·b_re + a_im·b_im`` (the cosine) and imaginary part ``Σ a_im·b_re − a_re·b_im`` (the sine); their sum
    measures the angle difference in complex space. Asymmetric in (a, b).

    References:
        Li & Li, *AoE: Angle-optimized Embeddings for Semantic Textual Similarity*, ACL 2024, arXiv 2309.12871.
    """
    if emb_a.shape[-1] % 2:
        emb_a = F.pad(emb_a, (0, 1))
        emb_b = F.pad(emb_b, (0, 1))
    emb_a = F.normalize(emb_a.float(), p=2, dim=-1)
    emb_b = F.normalize(emb_b.float(), p=2, dim=-1)
    a_re, a_im = emb_a.chunk(2, dim=-1)
    b_re, b_im = emb_b.chunk(2, dim=-1)
    cosine = (emb_a * emb_b).sum(dim=-1)
    sine = (a_im * b_re - a_re * b_im).sum(dim=-1)
    return (cosine + sine).abs()


def angle_loss(emb_a: Tensor, emb_b: Tensor, scores: Tensor, scale: float = 20.0) -> Tensor:
    """AnglE loss: the CoSENT ranking (:func:`~ese_trainer.losses.cosent.ranking_loss`) over
    ``ang_i = angle_similarity(a_i, b_i)``::

        L = log(1 + Σ_{s_i < s_j} exp(scale · (ang_i − ang_j)))

    Args:
        emb_a, emb_b: ``B x D`` embeddings of the two sides of ``B`` pairs.
        scores: ``B`` gold scores in [0, 1].
        scale: inverse temperature (20 = temperature 0.05).

    References:
        Li & Li, arXiv 2309.12871, eq. 6.

    Relations:
        Equals sentence-transformers' ``AnglELoss`` (tested); ``pairwise_angle_sim`` there is the same similarity.
    """
    check_pair_inputs(emb_a, emb_b, scores)
    return ranking_loss(angle_similarity(emb_a, emb_b), scores, scale)
