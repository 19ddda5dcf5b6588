"""The combined loss ``cosent_w·CoSENT + ibn_w·InfoNCE + angle_w·AnglE + hinge_w·hinge`` over grouped rows: the one
table of its terms."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from ese_trainer.losses.angle import angle_loss
from ese_trainer.losses.cosent import cosent_loss
from ese_trainer.losses.hinge import hardest_negative_hinge_loss
from ese_trainer.losses.in_batch_negatives import DEFAULT_SETTINGS, InBatchSettings, in_batch_negatives_loss
from ese_trainer.losses.row_batch import RowBatch


@dataclass(frozen=True)
class LossSettings:
    """Everything the terms need beyond the batch: the ranking terms' scales, the in-batch term's settings (its
    scale, directions, hardness, guide margin; shared by the hinge, which sees the same candidates) and the hinge's
    margin."""

    cosent_scale: float = 20.0
    angle_scale: float = 20.0
    in_batch: InBatchSettings = DEFAULT_SETTINGS
    hinge_margin: float = 0.2


def _ranking(function: Callable[[Tensor, Tensor, Tensor, float], Tensor], scale: Callable[[LossSettings], float]):
    def term(batch: RowBatch, settings: LossSettings) -> Tensor:
        first, second, scores = batch.scored_pairs()
        if first.numel() < 2:  # no order to learn from: zero, with a graph
            return 0.0 * batch.embeddings.sum()
        return function(batch.embeddings[first], batch.embeddings[second], scores, scale(settings))
    return term


def _contrastive(function: Callable[..., Tensor], **extra: Callable[[LossSettings], float]):
    def term(batch: RowBatch, settings: LossSettings) -> Tensor:
        documents, doc_row, positive = batch.documents()
        rows, ids = batch.num_rows, batch.text_ids
        guide = None if batch.guide is None else (batch.guide[:rows], batch.guide[documents])
        return function(batch.embeddings[:rows], batch.embeddings[documents], doc_row, positive,
                        settings=settings.in_batch, anchor_ids=None if ids is None else ids[:rows],
                        doc_ids=None if ids is None else ids[documents], guide=guide,
                        **{name: value(settings) for name, value in extra.items()})
    return term


@dataclass(frozen=True)
class LossTerm:
    """A term of the combined loss: its config key (``<key>_w``), its log name ``loss_<key>``, the name the model
    card shows, and the function ``(batch, settings) -> scalar``."""

    key: str
    title: str
    compute: Callable[[RowBatch, LossSettings], Tensor]

    @property
    def log_name(self) -> str:
        return f"loss_{self.key}"


LOSS_TERMS = (
    LossTerm("cosent", "CoSENT (cosine ranking of the scored pairs)",
             _ranking(cosent_loss, lambda settings: settings.cosent_scale)),
    LossTerm("ibn", "in-batch negatives (InfoNCE over positives and hard negatives)",
             _contrastive(in_batch_negatives_loss)),
    LossTerm("angle", "AnglE (angle ranking of the scored pairs)",
             _ranking(angle_loss, lambda settings: settings.angle_scale)),
    LossTerm("hinge", "hinge on the hardest negative (PromCSE)",
             _contrastive(hardest_negative_hinge_loss, margin=lambda settings: settings.hinge_margin)),
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

    Relations:
        sentence-transformers would sum ``CoSENTLoss``, ``MultipleNegativesRankingLoss`` (or ``GISTEmbedLoss``) and
        ``AnglELoss`` over differently laid-out datasets; here they share one forward pass of each row's texts.
    """

    def __init__(self, weights: dict[str, float], settings: LossSettings | None = None) -> None:
        super().__init__()
        missing = [term.key for term in LOSS_TERMS if term.key not in weights]
        if missing:
            raise ValueError(f"combined loss: no weight for {missing}")
        self.terms = [term for term in LOSS_TERMS if weights[term.key]]
        if not self.terms:
            raise ValueError("all loss weights are 0: nothing to train")
        self.weights = {term.log_name: weights[term.key] for term in self.terms}
        self.settings = settings or LossSettings()

    def forward(self, batch: RowBatch) -> dict[str, Tensor]:
        return {term.log_name: term.compute(batch, self.settings) for term in self.terms}

    def combine(self, terms: dict[str, Tensor]) -> Tensor:
        return sum(self.weights[name] * value for name, value in terms.items())

    def total(self, batch: RowBatch) -> Tensor:
        """The weighted sum for ``batch`` (e.g. a shallower layer's embeddings under ESE)."""
        return self.combine(self(batch))
