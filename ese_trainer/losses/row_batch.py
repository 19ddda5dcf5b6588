"""One batch of grouped rows as the losses see it: every text embedded once, and where each text sits in its row."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ese_trainer.data.rows import NEGATIVE, POSITIVE
from ese_trainer.losses.in_batch_negatives import InBatchCandidates


class RowBatch(NamedTuple):
    """``embeddings`` (``N x D``): the ``R`` rows' anchors first, then their ``M = N − R`` other texts; for each
    other text its row (``other_row``), role (``other_role``: :data:`~ese_trainer.data.rows.POSITIVE`,
    ``NEGATIVE`` or ``SCORED``) and gold score against the row's anchor (``other_score``, NaN when it has none).
    ``text_ids`` (``N``, equal for equal texts) mark duplicates; ``guide`` (``N x G``) is a frozen guide model's
    embedding of the same texts, for false-negative filtering; ``source`` the index of the training source all the
    rows come from (None: unknown, e.g. evaluation), which picks that source's loss weights."""

    embeddings: Tensor
    other_row: Tensor
    other_role: Tensor
    other_score: Tensor
    text_ids: Tensor | None = None
    guide: Tensor | None = None
    source: int | None = None

    @property
    def num_rows(self) -> int:
        return self.embeddings.shape[0] - self.other_row.shape[0]

    def with_embeddings(self, embeddings: Tensor) -> RowBatch:
        """The same rows with other embeddings of the same texts (a shallower layer's, the first k dims)."""
        return self._replace(embeddings=embeddings)

    def documents(self) -> tuple[Tensor, Tensor, Tensor]:
        """The in-batch term's documents (every positive and hard negative): their text indices, their rows, and
        each row's positive as an index into them (−1 for none)."""
        is_document = (self.other_role == POSITIVE) | (self.other_role == NEGATIVE)
        chosen = torch.nonzero(is_document).flatten()
        doc_row = self.other_row[chosen]
        positive = torch.full((self.num_rows,), -1, dtype=torch.long, device=self.other_row.device)
        is_positive = self.other_role[chosen] == POSITIVE
        positive[doc_row[is_positive]] = torch.nonzero(is_positive).flatten()
        return chosen + self.num_rows, doc_row, positive

    def candidates(self) -> InBatchCandidates:
        """The in-batch term's view of the batch: the anchors, the :meth:`documents` with their rows and each row's
        positive, and the same texts' ids and guide embeddings."""
        documents, doc_row, positive = self.documents()
        anchors = slice(0, self.num_rows)
        ids, guide = self.text_ids, self.guide
        return InBatchCandidates(
            self.embeddings[anchors], self.embeddings[documents], doc_row, positive,
            anchor_ids=None if ids is None else ids[anchors], doc_ids=None if ids is None else ids[documents],
            guide=None if guide is None else (guide[anchors], guide[documents]))

    def scored_pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        """The ranking terms' pairs ``(anchor, text, score)`` of every text with a gold score: the two sides' text
        indices and the scores."""
        scored = torch.nonzero(~torch.isnan(self.other_score)).flatten()
        return self.other_row[scored], scored + self.num_rows, self.other_score[scored]
