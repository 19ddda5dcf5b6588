"""The combined loss ``cosent_w·CoSENT + ibn_w·InfoNCE + angle_w·AnglE + hinge_w·hinge`` over grouped rows: the one
table of its terms."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

from torch import Tensor, nn

from ese_trainer.losses.angle import angle_loss
from ese_trainer.losses.cosent import cosent_loss
from ese_trainer.losses.hinge import hinge_over
from ese_trainer.losses.in_batch_negatives import (
    DEFAULT_SETTINGS,
    Blocks,
    InBatchSettings,
    in_batch_blocks,
    info_nce_over,
)
from ese_trainer.losses.row_batch import RowBatch
from ese_trainer.losses.zero_loss import zero_loss


@dataclass(frozen=True)
class LossSettings:
    """Everything the terms need beyond the batch: the ranking terms' scales, the in-batch term's settings (its
    scale, directions, hardness, guide margin; shared by the hinge, which sees the same candidates) and the hinge's
    margin."""

    cosent_scale: float = 20.0
    angle_scale: float = 20.0
    in_batch: InBatchSettings = DEFAULT_SETTINGS
    hinge_margin: float = 0.2


class TermInputs:
    """What the terms read of one batch: the batch, the settings, the scored pairs (CoSENT, AnglE) and the in-batch
    blocks, built once and shared by the in-batch term and the hinge (the same candidates and exclusions)."""

    def __init__(self, batch: RowBatch, settings: LossSettings) -> None:
        self.batch, self.settings = batch, settings

    def scored_pairs(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """Both sides' embeddings and the gold score of every scored pair; None under two pairs (no order to learn)."""
        first, second, scores = self.batch.scored_pairs()
        if first.numel() < 2:
            return None
        return self.batch.embeddings[first], self.batch.embeddings[second], scores

    @cached_property
    def blocks(self) -> Blocks:
        return in_batch_blocks(self.batch.candidates(), self.settings.in_batch)


def cosent_term(inputs: TermInputs) -> Tensor:
    """CoSENT over every scored pair of the batch; 0 (with a graph) under two pairs."""
    pairs = inputs.scored_pairs()
    return zero_loss(inputs.batch.embeddings) if pairs is None else cosent_loss(*pairs, inputs.settings.cosent_scale)


def angle_term(inputs: TermInputs) -> Tensor:
    """AnglE over every scored pair of the batch; 0 (with a graph) under two pairs."""
    pairs = inputs.scored_pairs()
    return zero_loss(inputs.batch.embeddings) if pairs is None else angle_loss(*pairs, inputs.settings.angle_scale)


def in_batch_term(inputs: TermInputs) -> Tensor:
    """In-batch negatives: each anchor's softmax over every positive and hard negative of the batch."""
    return info_nce_over(inputs.blocks)


def hinge_term(inputs: TermInputs) -> Tensor:
    """The hinge on each anchor's hardest negative, over the in-batch term's blocks."""
    return hinge_over(inputs.blocks, inputs.settings.hinge_margin)


@dataclass(frozen=True)
class LossTerm:
    """A term of the combined loss: its config key (``<key>_w``), its log name ``loss_<key>``, the name the model
    card shows, and the function ``TermInputs -> scalar``."""

    key: str
    title: str
    compute: Callable[[TermInputs], Tensor]

    @property
    def log_name(self) -> str:
        return f"loss_{self.key}"


LOSS_TERMS = (
    LossTerm("cosent", "CoSENT (cosine ranking of the scored pairs)", cosent_term),
    LossTerm("ibn", "in-batch negatives (InfoNCE over positives and hard negatives)", in_batch_term),
    LossTerm("angle", "AnglE (angle ranking of the scored pairs)", angle_term),
    LossTerm("hinge", "hinge on the hardest negative (PromCSE)", hinge_term),
)


class CombinedLoss(nn.Module):
    """The weighted sum of the :data:`LOSS_TERMS` whose weight is not 0::

        L = cosent_w · CoSENT + ibn_w · InfoNCE + angle_w · AnglE + hinge_w · hinge

    over one :class:`~ese_trainer.losses.row_batch.RowBatch`: the ranking terms (CoSENT, AnglE) over every scored
    pair ``(anchor, text, score)`` of the batch — an NLI premise with its entailment (1), neutral (0.5) and
    contradiction (0) hypotheses, an STS pair with its gold score — and the contrastive terms (in-batch negatives,
    hinge) over each anchor's softmax of every positive and hard negative of the batch. ``forward`` returns the
    unweighted terms by log name (``loss_cosent``, ``loss_ibn``, ``loss_angle``, ``loss_hinge``); :meth:`combine`
    their weighted sum.

    Args:
        weights: ``{term key: weight}`` for every key of :data:`LOSS_TERMS`.
        settings: :class:`LossSettings`.
        source_weights: per training source (by index), ``{term key: weight}`` for the steps of that source (a key
            left out keeps ``weights``'); None or missing: ``weights``. A term with a weight anywhere is computed for
            every batch (and logged), weighted 0 where its source turns it off.

    Relations:
        sentence-transformers would sum ``CoSENTLoss``, ``MultipleNegativesRankingLoss`` (or ``GISTEmbedLoss``) and
        ``AnglELoss`` over differently laid-out datasets; here they share one forward pass of each row's texts.
    """

    def __init__(self, weights: dict[str, float], settings: LossSettings | None = None,
                 source_weights: Sequence[dict[str, float] | None] = ()) -> None:
        super().__init__()
        missing = [term.key for term in LOSS_TERMS if term.key not in weights]
        if missing:
            raise ValueError(f"combined loss: no weight for {missing}")
        per_source = [{**weights, **(own or {})} for own in source_weights]
        for index, own in enumerate(per_source):
            unknown = sorted(set(own) - {term.key for term in LOSS_TERMS})
            if unknown:
                raise ValueError(f"source {index}: no loss term {unknown}; terms: {[t.key for t in LOSS_TERMS]}")
            if not any(own.values()):
                raise ValueError(f"source {index}: all loss weights are 0: its steps would train nothing")
        self.terms = [term for term in LOSS_TERMS if any(each[term.key] for each in (weights, *per_source))]
        if not self.terms:
            raise ValueError("all loss weights are 0: nothing to train")
        self.weights = {term.log_name: weights[term.key] for term in self.terms}
        self.source_weights = [{term.log_name: own[term.key] for term in self.terms} for own in per_source]
        self.settings = settings or LossSettings()

    def forward(self, batch: RowBatch) -> dict[str, Tensor]:
        inputs = TermInputs(batch, self.settings)
        return {term.log_name: term.compute(inputs) for term in self.terms}

    def weights_for(self, source: int | None) -> dict[str, float]:
        """The term weights of a step of training source ``source`` (the run's own for None or a source without
        weights of its own)."""
        return self.source_weights[source] if source is not None and source < len(self.source_weights) else self.weights

    def combine(self, terms: dict[str, Tensor], source: int | None = None) -> Tensor:
        weights = self.weights_for(source)
        return sum(weights[name] * value for name, value in terms.items())

    def total(self, batch: RowBatch) -> Tensor:
        """The weighted sum for ``batch`` (e.g. a shallower layer's embeddings under ESE)."""
        return self.combine(self(batch), batch.source)
