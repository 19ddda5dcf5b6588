"""Batching of sentence pairs with the model's own tokenizer."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

# Scores travel under this key, never ``labels``: with ``labels`` in the batch transformers 5 assumes the
# model already divided the loss by gradient accumulation and skips its own division.
SCORES_KEY = "scores"
# 64-bit hashes of the 2B texts (equal texts, equal ids), for masking duplicate texts as negatives.
TEXT_IDS_KEY = "text_ids"


def text_id(text: str) -> int:
    """A stable 64-bit id of ``text`` (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


@dataclass
class PairCollator:
    """Tokenise both sides of B pairs as one 2B batch (rows 0..B-1 side one, B..2B-1 side two).

    Truncation at ``max_seq_length`` and dynamic padding to the longest text of the batch.
    """

    tokenizer: PreTrainedTokenizerBase
    max_seq_length: int = 128

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor | bool]:
        texts = [feature["sentence1"] for feature in features] + [feature["sentence2"] for feature in features]
        batch = dict(self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_seq_length,
                                    return_tensors="pt"))
        batch[SCORES_KEY] = torch.tensor([float(feature["score"]) for feature in features], dtype=torch.float32)
        batch[TEXT_IDS_KEY] = torch.tensor([text_id(text) for text in texts], dtype=torch.int64)
        batch["return_loss"] = True
        return batch


def add_length_column(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_seq_length: int,
                      column: str = "length") -> Dataset:
    """Token length of each pair's longer side, for the Trainer's length-grouped sampler."""

    def lengths(batch: dict) -> dict:
        first = tokenizer(batch["sentence1"], truncation=True, max_length=max_seq_length)["input_ids"]
        second = tokenizer(batch["sentence2"], truncation=True, max_length=max_seq_length)["input_ids"]
        return {column: [max(len(a), len(b)) for a, b in zip(first, second)]}

    return dataset.map(lengths, batched=True, desc="token lengths")
