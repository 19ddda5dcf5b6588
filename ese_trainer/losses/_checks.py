"""Shape checks shared by the pair losses."""

from __future__ import annotations

from torch import Tensor


def check_pair_inputs(emb_a: Tensor, emb_b: Tensor, scores: Tensor) -> None:
    """Two ``B x D`` embeddings of equal shape and ``B`` scores, or a ValueError saying what was given."""
    if emb_a.dim() != 2 or emb_a.shape != emb_b.shape:
        raise ValueError(
            f"expected two B x D embeddings of equal shape, got {tuple(emb_a.shape)} and {tuple(emb_b.shape)}"
        )
    if scores.dim() != 1 or scores.shape[0] != emb_a.shape[0]:
        raise ValueError(f"expected {emb_a.shape[0]} scores, got shape {tuple(scores.shape)}")
