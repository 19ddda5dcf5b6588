"""In-batch negatives over grouped rows: each anchor's softmax over every positive and hard negative of the batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ese_trainer.losses.zero_loss import zero_loss

DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
PARTITION_MODES = ("joint", "per_direction")
HARDNESS_MODES = ("none", "hard_negatives", "in_batch_negatives", "all_negatives")
GUIDE_MARGIN_STRATEGIES = ("absolute", "relative")


@dataclass(frozen=True)
class InBatchSettings:
    """How the in-batch term is built (every field off/default = sentence-transformers'
    ``MultipleNegativesRankingLoss``).

    ``directions``/``partition_mode``: which similarity blocks enter each anchor's softmax, one joint softmax or one
    per direction (as sentence-transformers'); ``hardness_mode``/``hardness_strength``: ``α·sg(cos)`` added to the
    logits of the penalised negatives (Lan et al. 2025; EmbeddingGemma for a row's own hard negatives);
    ``guide_margin``/``guide_margin_strategy``: with guide embeddings, a candidate the guide scores above the anchor's
    positive (less the margin) leaves the softmax (GISTEmbed).
    """

    scale: float = 20.0
    directions: tuple[str, ...] = ("query_to_doc",)
    partition_mode: str = "joint"
    hardness_mode: str = "none"
    hardness_strength: float = 0.0
    guide_margin: float = 0.0
    guide_margin_strategy: str = "absolute"

    def __post_init__(self) -> None:
        unknown = set(self.directions) - set(DIRECTIONS)
        if unknown or "query_to_doc" not in self.directions or len(set(self.directions)) != len(self.directions):
            raise ValueError(f"directions must be distinct values of {DIRECTIONS} including query_to_doc, "
                             f"got {list(self.directions)}")
        if self.partition_mode not in PARTITION_MODES:
            raise ValueError(f"partition_mode must be one of {PARTITION_MODES}, got {self.partition_mode!r}")
        if self.partition_mode == "per_direction" and {"query_to_query", "doc_to_doc"} & set(self.directions):
            raise ValueError("partition_mode per_direction needs every direction to hold the positive: use joint with "
                             "query_to_query or doc_to_doc")
        if self.hardness_mode not in HARDNESS_MODES:
            raise ValueError(f"hardness_mode must be one of {HARDNESS_MODES}, got {self.hardness_mode!r}")
        if self.hardness_strength < 0:
            raise ValueError(f"hardness_strength must be >= 0, got {self.hardness_strength}")
        if self.guide_margin_strategy not in GUIDE_MARGIN_STRATEGIES:
            raise ValueError(f"guide_margin_strategy must be one of {GUIDE_MARGIN_STRATEGIES}, "
                             f"got {self.guide_margin_strategy!r}")


DEFAULT_SETTINGS = InBatchSettings()  # sentence-transformers' MultipleNegativesRankingLoss at scale 20


class InBatchCandidates(NamedTuple):
    """A batch of grouped rows as the in-batch term and the hinge read it
    (:meth:`~ese_trainer.losses.row_batch.RowBatch.candidates` builds it from a collated batch).

    Row ``i`` has an anchor, at most one positive and any number of hard negatives, all texts of the batch:

    - ``anchors`` (``R x D``): every row's anchor;
    - ``docs`` (``C x D``): every positive and hard negative of the batch;
    - ``doc_row`` (``C``): the row of each document;
    - ``positive`` (``R``): each row's positive as an index into ``docs``, −1 for a row without one (it only
      contributes candidates: its anchor and its negatives);
    - ``anchor_ids``, ``doc_ids``: text ids (equal texts, equal ids) for duplicate masking;
    - ``guide``: a frozen guide model's embeddings of the anchors and the documents (GISTEmbed's filter).
    """

    anchors: Tensor
    docs: Tensor
    doc_row: Tensor
    positive: Tensor
    anchor_ids: Tensor | None = None
    doc_ids: Tensor | None = None
    guide: tuple[Tensor, Tensor] | None = None


@dataclass
class Blocks:
    """The softmax inputs of every query, built once by :func:`in_batch_blocks` and read by both the in-batch term
    and the hinge. The queries are the rows that have a positive (``query_rows``, ``Q`` of them); per direction a
    ``Q x K`` block of cosines against the candidates, ``targets`` each query's positive column in ``query_to_doc``,
    and ``excluded`` what leaves each softmax (the anchor itself, its row's own documents where a direction calls for
    it, duplicates of the anchor or positive text, guide-flagged false negatives)."""

    candidates: InBatchCandidates
    settings: InBatchSettings
    query_rows: Tensor
    targets: Tensor
    cosines: dict[str, Tensor]
    excluded: dict[str, Tensor]

    @property
    def each_query(self) -> Tensor:
        """``0 … Q−1``: with ``targets``, picks each query's positive column of a block."""
        return torch.arange(self.query_rows.numel(), device=self.targets.device)

    def zero(self) -> Tensor:
        """The term's value when no query has a candidate to compare: 0, joined to the anchors' and documents' graph."""
        return zero_loss(self.candidates.anchors, self.candidates.docs)


def _cosines(left: Tensor, right: Tensor) -> Tensor:
    return F.normalize(left.float(), dim=-1) @ F.normalize(right.float(), dim=-1).T


def _direction_blocks(anchors: Tensor, docs: Tensor, query_rows: Tensor, targets: Tensor,
                      directions: tuple[str, ...]) -> dict[str, Tensor]:
    """The cosine block of every direction: its query (the anchor, or for ``doc_to_*`` the anchor's positive) against
    its candidates (all documents, or all anchors)."""
    queries, positives = anchors[query_rows], docs[targets]
    blocks = {"query_to_doc": _cosines(queries, docs)}
    if "query_to_query" in directions:
        blocks["query_to_query"] = _cosines(queries, anchors)
    if "doc_to_query" in directions:
        blocks["doc_to_query"] = _cosines(positives, anchors)
    if "doc_to_doc" in directions:
        blocks["doc_to_doc"] = _cosines(positives, docs)
    return blocks


def in_batch_blocks(candidates: InBatchCandidates, settings: InBatchSettings = DEFAULT_SETTINGS) -> Blocks:
    """The similarity blocks of :func:`in_batch_negatives_loss` and what each excludes (see there)."""
    anchors, docs, doc_row, positive, anchor_ids, doc_ids, guide = candidates
    query_rows = torch.nonzero(positive >= 0).flatten()
    targets = positive[query_rows]
    cosines = _direction_blocks(anchors, docs, query_rows, targets, settings.directions)
    count, device = query_rows.numel(), anchors.device
    each_query = torch.arange(count, device=device)
    own_anchor = torch.zeros(count, anchors.shape[0], dtype=torch.bool, device=device)
    own_anchor[each_query, query_rows] = True
    own_docs = doc_row[None, :] == query_rows[:, None]
    target_column = torch.zeros(count, docs.shape[0], dtype=torch.bool, device=device)
    target_column[each_query, targets] = True
    # "own" columns stay in the softmax whatever the masks below say: the target, and (doc_to_query) the pair itself
    excluded = {"query_to_doc": torch.zeros_like(target_column)}
    kept = {"query_to_doc": target_column}
    if "query_to_query" in cosines:
        excluded["query_to_query"], kept["query_to_query"] = own_anchor, torch.zeros_like(own_anchor)
    if "doc_to_query" in cosines:
        excluded["doc_to_query"], kept["doc_to_query"] = torch.zeros_like(own_anchor), own_anchor
    if "doc_to_doc" in cosines:
        excluded["doc_to_doc"], kept["doc_to_doc"] = own_docs, torch.zeros_like(own_docs)
    if anchor_ids is not None and doc_ids is not None:
        same = torch.stack([anchor_ids[query_rows], doc_ids[targets]], dim=1)  # Q x 2: the anchor's, positive's texts
        for name in cosines:
            candidate_ids = doc_ids if name.endswith("doc") else anchor_ids
            duplicate = (candidate_ids[None, :, None] == same[:, None, :]).any(dim=-1)
            excluded[name] = excluded[name] | (duplicate & ~kept[name])
    if guide is not None:
        guided = _direction_blocks(guide[0], guide[1], query_rows, targets, settings.directions)
        threshold = guided["query_to_doc"][each_query, targets][:, None]
        margin = settings.guide_margin * (threshold.abs() if settings.guide_margin_strategy == "relative" else 1.0)
        for name, guided_block in guided.items():
            excluded[name] = excluded[name] | ((guided_block > threshold - margin) & ~kept[name])
    return Blocks(candidates, settings, query_rows, targets, cosines, excluded)


def in_batch_negatives_loss(candidates: InBatchCandidates, settings: InBatchSettings = DEFAULT_SETTINGS) -> Tensor:
    """InfoNCE with in-batch and hard negatives over grouped rows (MNRL / SimCSE-sup, and its variants)::

        L = −1/Q Σ_{i: row i has a positive} log softmax_{c ∈ C_i}(s · cos(q_i, c) + h_i(c))[p_i]

    Row ``i`` has an anchor ``a_i``, at most one positive ``p_i`` and any number of hard negatives, each a text of
    the batch; ``Q`` rows have a positive. ``C_i`` joins, per direction: ``query_to_doc`` a_i against every positive
    and hard negative of the batch (always); ``query_to_query`` a_i against every other anchor; ``doc_to_query`` p_i
    against every anchor; ``doc_to_doc`` p_i against every document of the other rows. ``partition_mode`` joint: one
    softmax over all of them; per_direction: the mean of one log-partition per direction. ``h_i`` is the hardness
    penalty ``α · sg(cos(a_i, c))`` on the negatives ``hardness_mode`` names (query_to_doc only). A candidate whose
    text is the anchor's or the positive's (a duplicate across rows) leaves the softmax; so does, with ``guide``
    embeddings (a frozen guide model's, of the same texts), every candidate the guide scores above ``cos_g(a_i, p_i)
    − margin`` (GISTEmbed's false-negative filter), never the positive itself.

    Args:
        candidates: :class:`InBatchCandidates` (anchors, documents, each document's row, each row's positive, text
            ids, guide embeddings).
        settings: :class:`InBatchSettings` (scale = 1/temperature, directions, partition, hardness, guide margin).

    Returns 0 (with a graph) when no row has a positive.

    References:
        van den Oord et al., arXiv 1807.03748 (InfoNCE); Gao et al., *SimCSE*, EMNLP 2021 (contradictions as hard
        negatives); Li et al., arXiv 2308.03281 (GTE: the four directions); Lan et al., arXiv 2503.04812 (hardness
        weighting); Solatorio, arXiv 2402.16829 (GISTEmbed's guide).

    Relations:
        With the defaults (query_to_doc, joint, no hardness, no guide) it equals sentence-transformers'
        ``MultipleNegativesRankingLoss`` on (anchor, positive, negative_1..k) columns, and with its directions,
        partition and hardness settings likewise; with a guide, query_to_doc + query_to_query (+ doc_to_doc on
        pairs) and scale 1/temperature it equals ``GISTEmbedLoss`` (tested against the installed library).
    """
    return info_nce_over(in_batch_blocks(candidates, settings))


def info_nce_over(blocks: Blocks) -> Tensor:
    """:func:`in_batch_negatives_loss` on blocks already built (the combined loss shares them with the hinge)."""
    if blocks.query_rows.numel() == 0:
        return blocks.zero()
    settings = blocks.settings
    logits = {}
    for name, cosines in blocks.cosines.items():
        scaled = settings.scale * cosines
        if name == "query_to_doc" and settings.hardness_mode != "none" and settings.hardness_strength > 0:
            scaled = scaled + settings.hardness_strength * cosines.detach() * _penalised(blocks, settings.hardness_mode)
        logits[name] = scaled.masked_fill(blocks.excluded[name], float("-inf"))
    positive_logits = logits["query_to_doc"][blocks.each_query, blocks.targets]
    if settings.partition_mode == "joint":
        log_partition = torch.logsumexp(torch.cat(list(logits.values()), dim=1), dim=1)
    else:
        log_partition = torch.stack([torch.logsumexp(block, dim=1) for block in logits.values()]).mean(dim=0)
    return (log_partition - positive_logits).mean()


def _penalised(blocks: Blocks, mode: str) -> Tensor:
    """Which ``query_to_doc`` logits get the hardness penalty: a row's own hard negatives (``hard_negatives``), the
    other rows' documents (``in_batch_negatives``) or every document but the positive (``all_negatives``)."""
    own = blocks.candidates.doc_row[None, :] == blocks.query_rows[:, None]
    target = torch.zeros_like(own)
    target[blocks.each_query, blocks.targets] = True
    if mode == "hard_negatives":
        return (own & ~target).float()
    if mode == "in_batch_negatives":
        return (~own).float()
    return (~target).float()
