"""STS evaluation: Spearman ×100 of cosine similarity, with the evaluated model's own tokenizer."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import BatchEncoding, PreTrainedTokenizerBase

from ese_trainer.data import STSPairs
from ese_trainer.evaluation.metrics import STS_SPEARMAN_PATH
from ese_trainer.modeling.encoding import SentenceEncoder
from ese_trainer.modeling.packing import packing_pays_off, use_packing

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
    layers: Sequence[int] | None = None,
    max_dim: int | None = None,
    packed: bool | None = None,
) -> torch.Tensor:
    """Pooled embeddings (float32, CPU) of ``sentences``, in their order: ``N x D`` of the last layer, or with
    ``layers`` ``N x len(layers) x D`` of ``hidden_states[ℓ]`` for each ``ℓ`` (one forward per batch serves every
    layer); ``max_dim`` keeps only the first dims. ``packed``: ``True`` runs every batch padding-free
    (:mod:`ese_trainer.modeling.packing`), ``False`` padded; ``None`` (default) packs, on a model that supports it,
    the batches whose padding makes it pay (:func:`~ese_trainer.modeling.packing.packing_pays_off`). The embeddings
    are the same either way, up to float rounding.

    Each distinct sentence is tokenised and encoded once; batches are formed by token length so
    padding is minimal.
    """
    choose = packed is None and use_packing("auto", model.config)
    dtype = next(model.parameters()).dtype
    encoders = {mode: SentenceEncoder(model, pooling, forward_chunks=1, pooled_layers=layers or (), packed=mode)
                for mode in (False, True)}

    def embed(model: nn.Module, batch: BatchEncoding) -> torch.Tensor:
        mode = packing_pays_off(batch["attention_mask"], dtype) if choose else bool(packed)
        encoded = encoders[mode](dict(batch))
        if layers is None:
            return encoded.embeddings[:, :max_dim]
        return torch.stack([encoded.layer_embeddings[layer][:, :max_dim] for layer in layers], dim=1)

    return encode_batched(model, tokenizer, sentences, embed, max_seq_length, batch_size, show_progress, description)


def encode_tasks(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Mapping[str, STSPairs],
    pooling: str,
    max_seq_length: int = 128,
    batch_size: int = 64,
    show_progress: bool = True,
    **options,
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(task, embeddings of sentences1, embeddings of sentences2)`` for each task in turn, from one :func:`encode` of
    the suite's distinct sentences: a sentence that several tasks share (STS-B reuses STS12-16's) is encoded once,
    and only one task's pairs are gathered at a time. ``options``: :func:`encode`'s ``layers``, ``max_dim`` and
    ``packed``."""
    unique = list(dict.fromkeys(sentence for pairs in tasks.values()
                                for sentence in (*pairs.sentences1, *pairs.sentences2)))
    description = next(iter(tasks)) if len(tasks) == 1 else f"STS suite ({len(tasks)} tasks)"
    embeddings = encode(model, tokenizer, unique, pooling, max_seq_length, batch_size, show_progress,
                        description=description, **options)
    row = {sentence: index for index, sentence in enumerate(unique)}
    for name, pairs in tasks.items():
        yield name, *(embeddings[torch.tensor([row[sentence] for sentence in side])]
                      for side in (pairs.sentences1, pairs.sentences2))


def bf16_copy(model: nn.Module) -> nn.Module:
    """A bfloat16 copy of ``model`` for inference (weights cast once, not at every matmul as under autocast); the
    model itself is left as it is."""
    return copy.deepcopy(model).to(torch.bfloat16).eval()


@functools.cache
def sts_spearman_metric():
    """The STS metric module (``evaluate.load`` of its file, offline), loaded once per process. ``evaluate`` is
    imported here, not with this module: it imports transformers' pipelines, seconds of start-up that a run with
    evaluation off (a timed run, a tuning run without dev) need not pay."""
    import evaluate

    return evaluate.load(STS_SPEARMAN_PATH)


def spearman(predictions: list[float], gold: list[float]) -> float:
    """Spearman's rho ×100 between predicted similarities and gold scores (the STS metric module, offline)."""
    return sts_spearman_metric().compute(predictions=list(predictions), references=list(gold))["spearman"]


def cosine_spearman(embeddings1: torch.Tensor, embeddings2: torch.Tensor, gold: list[float]) -> float:
    """Spearman ×100 between the pairs' cosine similarities and their gold scores."""
    return spearman(F.cosine_similarity(embeddings1, embeddings2, dim=-1).tolist(), gold)


def evaluate_sts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Mapping[str, STSPairs],
    pooling: str,
    max_seq_length: int = 128,
    batch_size: int = 64,
    show_progress: bool = True,
    packed: bool | None = None,
    max_dim: int | None = None,
    bf16: bool = False,
) -> dict[str, float]:
    """Cosine Spearman ×100 of each task, plus their average under ``"avg"`` when there are several (``packed``,
    ``max_dim``: see :func:`encode`); the suite is encoded once (:func:`encode_tasks`). ``bf16`` encodes with a
    bfloat16 copy of the model (:func:`bf16_copy`; ``TrainingArguments.bf16_full_eval``); similarities and Spearman
    stay float32."""
    model = bf16_copy(model) if bf16 else model
    results = {name: cosine_spearman(first, second, tasks[name].scores) for name, first, second in encode_tasks(
        model, tokenizer, tasks, pooling, max_seq_length, batch_size, show_progress, packed=packed, max_dim=max_dim)}
    if len(results) > 1:
        results[AVERAGE_KEY] = sum(results.values()) / len(results)
    return results

