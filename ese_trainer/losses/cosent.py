"""CoSENT: a ranking loss over the pairs' cosine similarities."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ese_trainer.losses._checks import check_pair_inputs


def ranking_loss(similarities: Tensor, scores: Tensor, scale: float = 20.0) -> Tensor:
    """The CoSENT ranking objective over any pairwise similarity::

        L = log(1 + Σ_{(i, j): s_i < s_j} exp(scale · (sim_i − sim_j)))

    Every pair of pairs whose gold order is ``s_i < s_j`` is penalised when its predicted similarities are in the
    wrong order. Only the order of the scores matters: the loss is invariant to any monotone rescaling of them.

    Args:
        similarities: ``B`` predicted similarities.
        scores: ``B`` gold scores (any scale).
        scale: inverse temperature (20 = temperature 0.05).

    References:
        Su, *CoSENT: a more efficient sentence vector scheme than Sentence-BERT*, 2022, https://kexue.fm/archives/8847
    """
    similarities = similarities.float() * scale
    differences = similarities[:, None] - similarities[None, :]
    wrong_order_allowed = scores[:, None] < scores[None, :]
    differences = differences.masked_fill(~wrong_order_allowed, float("-inf"))
    zero = differences.new_zeros(1)
    return torch.logsumexp(torch.cat([zero, differences.flatten()]), dim=0)


def cosent_loss(emb_a: Tensor, emb_b: Tensor, scores: Tensor, scale: float = 20.0) -> Tensor:
    """CoSENT loss: :func:`ranking_loss` over ``cos_i = cos(a_i, b_i)``::

        L = log(1 + Σ_{s_i < s_j} exp(scale · (cos_i − cos_j)))

    Args:
        emb_a, emb_b: ``B x D`` embeddings of the two sides of ``B`` pairs.
        scores: ``B`` gold scores in [0, 1] (NLI labels through the label map, STS gold / 5).
        scale: inverse temperature (20 = temperature 0.05).

    References:
        Su, *CoSENT*, 2022 (above); used by AnglE (Li & Li, arXiv 2309.12871) as its "cosine" term.

    Relations:
        Equals sentence-transformers' ``CoSENTLoss`` (tested). Not sentence-transformers' ``CosineSimilarityLoss``,
        which is an MSE between cosine and score and so needs the scores on the cosine's scale.
    """
    check_pair_inputs(emb_a, emb_b, scores)
    cosines = F.cosine_similarity(emb_a.float(), emb_b.float(), dim=-1)
    return ranking_loss(cosines, scores, scale)
