"""The combined pair loss ``cosent_w·CoSENT + ibn_w·InfoNCE + angle_w·AnglE``: the one table of its terms."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor, nn

from ese_trainer.losses.angle import angle_loss
from ese_trainer.losses.cosent import cosent_loss
from ese_trainer.losses.in_batch_negatives import in_batch_negative_loss


class Pairs(NamedTuple):
    """One batch of pairs: the two sides' embeddings (``B x D``), scores (``B``), and the ``2B`` text ids
    (first sides, then second sides) that mark duplicate texts, or None."""

    emb_a: Tensor
    emb_b: Tensor
    scores: Tensor
    text_ids: Tensor | None = None


@dataclass(frozen=True)
class PairTerm:
    """A term of the pair loss: its config key (``<key>_w``, ``<key>_scale``), its log name ``loss_<key>``, the
    name the model card shows, and the function ``(pairs, scale, positive_threshold) -> scalar``."""

    key: str
    title: str
    compute: Callable[[Pairs, float, float], Tensor]

    @property
    def log_name(self) -> str:
        return f"loss_{self.key}"


PAIR_TERMS = (
    PairTerm("cosent", "CoSENT (cosine ranking)", lambda p, scale, _: cosent_loss(p.emb_a, p.emb_b, p.scores, scale)),
    PairTerm("ibn", "in-batch negatives (InfoNCE)",
             lambda p, scale, threshold: in_batch_negative_loss(p.emb_a, p.emb_b, p.scores, scale, threshold,
                                                                p.text_ids)),
    PairTerm("angle", "AnglE (angle ranking)", lambda p, scale, _: angle_loss(p.emb_a, p.emb_b, p.scores, scale)),
)


class PairLoss(nn.Module):
    """The weighted sum of the :data:`PAIR_TERMS` whose weight is not 0::

        L_pair = cosent_w · CoSENT + ibn_w · InfoNCE + angle_w · AnglE

    each term at its own scale (inverse temperature); ``ibn_positive_threshold`` picks the in-batch positives.
    ``forward`` returns the unweighted terms by log name (``loss_cosent``, ``loss_ibn``, ``loss_angle``);
    :meth:`combine` their weighted sum.

    Args:
        weights: ``{term key: weight}`` for every key of :data:`PAIR_TERMS`.
        scales: ``{term key: scale}`` likewise.
        ibn_positive_threshold: pairs with a score at least this are in-batch positives.

    Relations:
        sentence-transformers would sum ``CoSENTLoss``, ``MultipleNegativesRankingLoss`` and ``AnglELoss``; this is
        their sum on one forward pass, with positives chosen by score (an NLI batch mixes entailment, neutral and
        contradiction pairs) and duplicate texts never counted as negatives.
    """

    def __init__(self, weights: dict[str, float], scales: dict[str, float], ibn_positive_threshold: float = 1.0
                 ) -> None:
        super().__init__()
        missing = [term.key for term in PAIR_TERMS if term.key not in weights or term.key not in scales]
        if missing:
            raise ValueError(f"pair loss: no weight or scale for {missing}")
        self.terms = [term for term in PAIR_TERMS if weights[term.key]]
        if not self.terms:
            raise ValueError("all pair-loss weights are 0: nothing to train")
        self.weights = {term.log_name: weights[term.key] for term in self.terms}
        self.scales = {term.log_name: scales[term.key] for term in self.terms}
        self.ibn_positive_threshold = ibn_positive_threshold

    def forward(self, pairs: Pairs) -> dict[str, Tensor]:
        return {term.log_name: term.compute(pairs, self.scales[term.log_name], self.ibn_positive_threshold)
                for term in self.terms}

    def combine(self, terms: dict[str, Tensor]) -> Tensor:
        return sum(self.weights[name] * value for name, value in terms.items())

    def total(self, pairs: Pairs) -> Tensor:
        """The weighted sum for ``pairs`` (e.g. a shallower layer's embeddings under ESE)."""
        return self.combine(self(pairs))
