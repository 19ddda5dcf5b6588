"""STS evaluation: Spearman ×100 of cosine similarity, with the evaluated model's own tokenizer."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import evaluate
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import BatchEncoding, PreTrainedTokenizerBase

from ese_trainer.data import STSPairs
from ese_trainer.metrics import STS_SPEARMAN_PATH
from ese_trainer.pooling import pool

AVERAGE_KEY = "avg"


@torch.no_grad()
def encode_batched(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    sentences: list[str],
    embed: Callable[[nn.Module, BatchEncoding], torch.Tensor],
    max_seq_length: int = 128,
    batch_size: int = 64,
    show_progress: bool = True,
    description: str = "encoding",
) -> torch.Tensor:
    """``embed(model, batch)`` of every sentence (``N x ...``, float32, CPU), in the order of ``sentences``.

    Each distinct sentence is tokenised and encoded once; batches are formed by token length so padding is
    minimal. ``embed`` gets each padded batch (on the model's device) and returns one row per sentence.
    """
    unique = list(dict.fromkeys(sentences))
    token_ids = tokenizer(unique, truncation=True, max_length=max_seq_length)
    order = sorted(range(len(unique)), key=lambda i: len(token_ids["input_ids"][i]), reverse=True)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    embeddings: list[torch.Tensor | None] = [None] * len(unique)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=description, disable=not show_progress,
                          leave=False):
            rows = order[start:start + batch_size]
            features = [{key: values[i] for key, values in token_ids.items()} for i in rows]
            batch = tokenizer.pad(features, return_tensors="pt").to(device)
            for row, vector in zip(rows, embed(model, batch).float().cpu()):
                embeddings[row] = vector
    finally:
        model.train(was_training)
    index = {sentence: i for i, sentence in enumerate(unique)}
    return torch.stack([embeddings[index[sentence]] for sentence in sentences])


def encode(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    sentences: list[str],
    pooling: str,
    max_seq_length: int = 128,
    batch_size: int = 64,
    show_progress: bool = True,
    description: str = "encoding",
) -> torch.Tensor:
    """Pooled embeddings (``N x D``, float32, CPU) of ``sentences``, in their order.

    Each distinct sentence is tokenised and encoded once; batches are formed by token length so
    padding is minimal.
    """

    def embed(model: nn.Module, batch: BatchEncoding) -> torch.Tensor:
        return pool(model(**batch).last_hidden_state, batch["attention_mask"], pooling)

    return encode_batched(model, tokenizer, sentences, embed, max_seq_length, batch_size, show_progress, description)


def cosine_spearman(embeddings1: torch.Tensor, embeddings2: torch.Tensor, gold: list[float]) -> float:
    """Spearman ×100 between the pairs' cosine similarities and their gold scores."""
    cosines = F.cosine_similarity(embeddings1, embeddings2, dim=-1)
    metric = evaluate.load(STS_SPEARMAN_PATH)
    return metric.compute(predictions=cosines.tolist(), references=list(gold))["spearman"]


def evaluate_sts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Mapping[str, STSPairs],
    pooling: str,
    max_seq_length: int = 128,
    batch_size: int = 64,
    show_progress: bool = True,
) -> dict[str, float]:
    """Cosine Spearman ×100 of each task, plus their average under ``"avg"`` when there are several."""
    results = {}
    for name, pairs in tasks.items():
        embeddings = encode(model, tokenizer, pairs.sentences1 + pairs.sentences2, pooling, max_seq_length,
                            batch_size, show_progress, description=name)
        results[name] = cosine_spearman(embeddings[: len(pairs)], embeddings[len(pairs):], pairs.scores)
    if len(results) > 1:
        results[AVERAGE_KEY] = sum(results.values()) / len(results)
    return results


def markdown_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """A Markdown table: one row per named result set (e.g. before/after), one column per task."""
    columns = list(dict.fromkeys(column for row in rows.values() for column in row))
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, row in rows.items():
        cells = [f"{row[column]:.2f}" if column in row else "–" for column in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
