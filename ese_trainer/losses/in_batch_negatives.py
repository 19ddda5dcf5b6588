"""In-batch negatives: a symmetric InfoNCE over every text of the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ese_trainer.losses._checks import check_pair_inputs


def in_batch_negative_loss(
    emb_a: Tensor,
    emb_b: Tensor,
    scores: Tensor,
    scale: float = 20.0,
    positive_threshold: float = 1.0,
    text_ids: Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE over the 2B texts ``t = [a_1..a_B, b_1..b_B]`` of a batch, compared by ``scale·cos``.

    Pair i is a positive when ``s_i ≥ positive_threshold``; for each positive pair both directions are anchors::

        L = −1/(2P) Σ_{i positive} [ log softmax_{t ≠ a_i}(scale·cos(a_i, t))[b_i]
                                    + log softmax_{t ≠ b_i}(scale·cos(b_i, t))[a_i] ]

    The anchor itself is excluded from its softmax; every other text, including both sides of
    neutral/contradiction pairs, is a negative — a contradiction hypothesis in the same batch as its premise is
    that premise's hard negative (SimCSE's supervised setting).

    Args:
        emb_a, emb_b: ``B x D`` embeddings of the two sides of ``B`` pairs.
        scores: ``B`` scores in [0, 1]; those ``≥ positive_threshold`` mark the positive pairs.
        scale: inverse temperature (20 = temperature 0.05).
        positive_threshold: the score from which a pair is a positive.
        text_ids: ``2B`` ids, equal for equal texts (an NLI premise shared by several pairs): copies of the anchor
            and copies of its positive are left out of the anchor's softmax, so a duplicate is never a negative.

    Returns 0 (with a graph) when the batch holds no positive pair.

    References:
        Gao et al., *SimCSE*, EMNLP 2021; AnglE's ``ibn`` term (Li & Li, arXiv 2309.12871).

    Relations:
        With every pair positive this equals the mean of sentence-transformers' ``MultipleNegativesRankingLoss``
        with ``directions=("query_to_doc", "query_to_query")`` applied to (a, b) and to (b, a) (tested). AnglE
        picks positives by ``int(label) != 0``, so fractional scores vanish and scores ≥ 2 create spurious targets;
        here the threshold decides.
    """
    check_pair_inputs(emb_a, emb_b, scores)
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
