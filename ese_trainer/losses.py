"""Pair losses for sentence-embedding training.

Each function takes the embeddings of the two sides of B pairs (``B x D`` each) and their float
similarity scores (``B``, in [0, 1]) and returns a scalar loss. ``scale`` is the inverse
temperature (20 = temperature 0.05), as in CoSENT, AnglE and SimCSE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_pair_inputs(emb_a: Tensor, emb_b: Tensor, scores: Tensor) -> None:
    if emb_a.dim() != 2 or emb_a.shape != emb_b.shape:
        raise ValueError(
            f"expected two B x D embeddings of equal shape, got {tuple(emb_a.shape)} and {tuple(emb_b.shape)}"
        )
    if scores.dim() != 1 or scores.shape[0] != emb_a.shape[0]:
        raise ValueError(f"expected {emb_a.shape[0]} scores, got shape {tuple(scores.shape)}")


def ranking_loss(similarities: Tensor, scores: Tensor, scale: float = 20.0) -> Tensor:
    """CoSENT ranking objective over any pairwise similarity (Su, 2022).

    ``log(1 + sum_{(i, j): s_i < s_j} exp(scale * (sim_i - sim_j)))``: every pair of pairs whose gold
    order is ``s_i < s_j`` is penalised when its predicted similarities are in the wrong order. Only the
    order of the scores matters, so the loss is invariant to any monotone rescaling of the scores.
    """
    similarities = similarities.float() * scale
    differences = similarities[:, None] - similarities[None, :]
    wrong_order_allowed = scores[:, None] < scores[None, :]
    differences = differences.masked_fill(~wrong_order_allowed, float("-inf"))
    zero = differences.new_zeros(1)
    return torch.logsumexp(torch.cat([zero, differences.flatten()]), dim=0)


def angle_similarity(emb_a: Tensor, emb_b: Tensor) -> Tensor:
    """Pairwise AnglE similarity ``|cos(a, b) + sin(a, b)|`` (Li & Li, 2023, arXiv 2309.12871).

    Each embedding is read as a complex vector whose real part is its first half and imaginary part its
    second half (an odd dimension is zero-padded). After L2 normalisation the complex division
    ``a / b`` has real part ``Σ a_re·b_re + a_im·b_im`` (the cosine) and imaginary part
    ``Σ a_im·b_re − a_re·b_im`` (the sine); their sum measures the angle difference in complex space.
    Asymmetric in (a, b).
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


def cosine_loss(emb_a: Tensor, emb_b: Tensor, scores: Tensor, scale: float = 20.0) -> Tensor:
    """CoSENT loss: ``log(1 + Σ_{s_i < s_j} exp(scale·(cos_i − cos_j)))`` (Su, 2022; used by AnglE).

    ``cos_i`` is the cosine similarity of pair i. Equals sentence-transformers' ``CoSENTLoss``.
    """
    _check_pair_inputs(emb_a, emb_b, scores)
    cosines = F.cosine_similarity(emb_a.float(), emb_b.float(), dim=-1)
    return ranking_loss(cosines, scores, scale)


def angle_loss(emb_a: Tensor, emb_b: Tensor, scores: Tensor, scale: float = 20.0) -> Tensor:
    """AnglE loss: the CoSENT ranking over :func:`angle_similarity` (arXiv 2309.12871, eq. 6).

    ``log(1 + Σ_{s_i < s_j} exp(scale·(ang_i − ang_j)))``. Equals sentence-transformers' ``AnglELoss``.
    """
    _check_pair_inputs(emb_a, emb_b, scores)
    return ranking_loss(angle_similarity(emb_a, emb_b), scores, scale)


def in_batch_negative_loss(
    emb_a: Tensor,
    emb_b: Tensor,
    scores: Tensor,
    scale: float = 20.0,
    positive_threshold: float = 1.0,
    text_ids: Tensor | None = None,
) -> Tensor:
    """Symmetric in-batch-negative InfoNCE over every text of the batch (AnglE's ibn; SimCSE, Gao et al. 2021).

    The 2B texts ``t = [a_1..a_B, b_1..b_B]`` are compared by ``scale·cos``. Pair i is a positive when
    ``s_i ≥ positive_threshold``; for each positive pair both directions are anchors::

        L = −1/(2P) Σ_{i positive} [ log softmax_{t ≠ a_i}(scale·cos(a_i, t))[b_i]
                                    + log softmax_{t ≠ b_i}(scale·cos(b_i, t))[a_i] ]

    The anchor itself is excluded from its softmax; every other text, including both sides of
    neutral/contradiction pairs, is a negative. Unlike AnglE's ``int(label) != 0`` rule, positives are
    chosen by a score threshold, so fractional scores never become spurious targets. With every pair
    positive this equals the mean of sentence-transformers' ``MultipleNegativesRankingLoss`` with
    ``directions=("query_to_doc", "query_to_query")`` applied to (a, b) and to (b, a).

    ``text_ids`` (2B, equal ids for equal texts, e.g. an NLI premise shared by several pairs) removes false
    negatives: copies of the anchor and copies of its positive are left out of the anchor's softmax.
    Returns 0 (with a graph) when the batch holds no positive pair.
    """
    _check_pair_inputs(emb_a, emb_b, scores)
    batch_size = emb_a.shape[0]
    texts = F.normalize(torch.cat([emb_a, emb_b], dim=0).float(), p=2, dim=-1)
    logits = scale * texts @ texts.T
    logits = logits.masked_fill(torch.eye(2 * batch_size, dtype=torch.bool, device=logits.device), float("-inf"))
    positive_rows = torch.nonzero(scores >= positive_threshold, as_tuple=True)[0]
    if positive_rows.numel() == 0:
        return logits.new_zeros(()) + 0.0 * texts.sum()
    anchors = torch.cat([positive_rows, positive_rows + batch_size])
    targets = torch.cat([positive_rows + batch_size, positive_rows])
    anchor_logits = logits[anchors]
    if text_ids is not None:
        same_text = text_ids[:, None] == text_ids[None, :]
        duplicates = same_text[anchors] | same_text[targets]
        duplicates[torch.arange(len(targets), device=duplicates.device), targets] = False
        anchor_logits = anchor_logits.masked_fill(duplicates, float("-inf"))
    return F.cross_entropy(anchor_logits, targets)
