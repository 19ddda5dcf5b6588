"""The dev score for model selection: Spearman of the pairs' cosine similarities, from the evaluation pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ese_trainer.evaluation.sts import spearman


class CosineSpearman:
    """Spearman ×100 between ``cos(a_i, b_i)`` and the gold scores, accumulated over evaluation batches.

    The trainer feeds it the embeddings of the evaluation loss pass, so one evaluation encodes the dev pairs once.
    The metric is logged as ``eval_<name>_spearman``; the same quantity as
    :func:`ese_trainer.evaluation.sts.cosine_spearman` (SentEval's, MTEB's ``cosine_spearman``).
    """

    def __init__(self, name: str = "sts_dev") -> None:
        self.metric = f"{name}_spearman"
        self.reset()

    def reset(self) -> None:
        self.cosines: list[Tensor] = []
        self.scores: list[Tensor] = []

    @torch.no_grad()
    def pair_cosines(self, emb_a: Tensor, emb_b: Tensor) -> Tensor:
        return F.cosine_similarity(emb_a.float(), emb_b.float(), dim=-1)

    def add(self, cosines: Tensor, scores: Tensor) -> None:
        self.cosines.append(cosines.detach().float().cpu())
        self.scores.append(scores.detach().float().cpu())

    def compute(self) -> float:
        if not self.cosines:
            raise ValueError(f"{self.metric}: no evaluation batch was seen")
        return spearman(torch.cat(self.cosines).tolist(), torch.cat(self.scores).tolist())
