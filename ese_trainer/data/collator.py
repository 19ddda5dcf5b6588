"""Batching grouped rows with the model's own tokenizer: every text of the batch tokenised once, and where it sits."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

# Where each text sits, under keys of their own: never ``labels`` (with ``labels`` in the batch transformers 5
# assumes the model already divided the loss by gradient accumulation and skips its own division).
OTHER_ROW_KEY, OTHER_ROLE_KEY, OTHER_SCORE_KEY = "other_row", "other_role", "other_score"
# 64-bit hashes of the N texts (equal texts, equal ids), for masking duplicate texts as negatives.
TEXT_IDS_KEY = "text_ids"
# A frozen guide model's embeddings of the N texts (false-negative filtering), when the run has a guide.
GUIDE_KEY = "guide_embeddings"
# The index of the training source every row of the batch comes from (each step draws from one source).
SOURCE_KEY = "source"
ROW_KEYS = (OTHER_ROW_KEY, OTHER_ROLE_KEY, OTHER_SCORE_KEY, TEXT_IDS_KEY, GUIDE_KEY, SOURCE_KEY)


def text_id(text: str) -> int:
    """A stable 64-bit id of ``text`` (the same in every process and run)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def row_text_ids(row: dict) -> tuple[int, ...]:
    """The ids of a row's texts (its anchor, then the others): what the no-duplicates batch rule compares."""
    return (text_id(row["anchor"]), *(text_id(text) for text in row["texts"]))


@dataclass
class RowCollator:
    """Tokenise every text of ``R`` rows as one ``N``-row batch: the ``R`` anchors first, then each row's other texts
    in row order; ``other_row``/``other_role``/``other_score`` say where each of the ``M = N − R`` other texts
    belongs (:class:`~ese_trainer.losses.RowBatch`).

    Truncation at ``max_seq_length`` and dynamic padding to the longest text of the batch. ``guide``, when given,
    maps texts to a frozen guide model's embeddings (``N x G``), sent with the batch.
    """

    tokenizer: PreTrainedTokenizerBase
    max_seq_length: int = 128
    guide: Callable[[list[str]], torch.Tensor] | None = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor | bool]:
        anchors = [feature["anchor"] for feature in features]
        others = [text for feature in features for text in feature["texts"]]
        texts = anchors + others
        batch = dict(self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_seq_length,
                                    return_tensors="pt"))
        batch[OTHER_ROW_KEY] = torch.tensor([row for row, feature in enumerate(features) for _ in feature["texts"]],
                                            dtype=torch.long)
        batch[OTHER_ROLE_KEY] = torch.tensor([role for feature in features for role in feature["roles"]],
                                             dtype=torch.long)
        batch[OTHER_SCORE_KEY] = torch.tensor([math.nan if score is None else float(score)
                                               for feature in features for score in feature["scores"]],
                                              dtype=torch.float32)
        batch[TEXT_IDS_KEY] = torch.tensor([text_id(text) for text in texts], dtype=torch.int64)
        if self.guide is not None:
            batch[GUIDE_KEY] = self.guide(texts)
        sources = {feature.get(SOURCE_KEY) for feature in features}
        if len(sources) == 1 and None not in sources:  # rows of one training source
            batch[SOURCE_KEY] = torch.tensor(sources.pop(), dtype=torch.long)
        batch["return_loss"] = True
        return batch
