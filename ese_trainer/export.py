"""Saving a trained encoder as a sentence-transformers folder."""

from __future__ import annotations

from pathlib import Path

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ese_trainer.pooling import ST_POOLING_MODES, check_pooling
from ese_trainer.st_modules import CLSAvgPooling


def save_sentence_transformer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | Path,
    pooling: str,
    max_seq_length: int,
) -> SentenceTransformer:
    """Write ``model`` + ``tokenizer`` + the training pooling as an ST folder; returns the loaded ST model.

    The folder loads with ``SentenceTransformer(output_dir)`` and embeds exactly as training did.
    """
    check_pooling(pooling)
    output_dir = str(output_dir)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    transformer = Transformer(output_dir, max_seq_length=max_seq_length)
    dimension = model.config.hidden_size
    pooling_module = CLSAvgPooling(dimension) if pooling == "cls_avg" else Pooling(dimension, ST_POOLING_MODES[pooling])
    sentence_transformer = SentenceTransformer(modules=[transformer, pooling_module], device="cpu")
    sentence_transformer.save(output_dir)
    return sentence_transformer
