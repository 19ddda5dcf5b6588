"""A frozen guide model's embeddings of a run's texts, computed once, looked up per batch (GISTEmbed's guide)."""

from __future__ import annotations

import torch
from transformers import AutoModel, AutoTokenizer

from ese_trainer.data.collator import text_id
from ese_trainer.evaluation.sts import encode


class GuideEmbeddings:
    """``guide(texts) -> N x G``: the guide model's embedding of each text, from a table computed before training.

    The guide is frozen, so embedding every distinct text once gives the same numbers as embedding each batch again
    (GISTEmbed runs its guide on every batch), at a fraction of the cost; the table holds
    ``distinct texts x G`` float32 values (SNLI dev+test and STS-B dev: ~30k x 384, 46 MB).

    References:
        Solatorio, *GISTEmbed: Guided In-sample Selection of Training Negatives for Text Embedding Fine-tuning*,
        arXiv 2402.16829.
    """

    def __init__(self, texts: list[str], embeddings: torch.Tensor, model: str) -> None:
        self.index = {text_id(text): row for row, text in enumerate(texts)}
        self.embeddings, self.model = embeddings, model

    @classmethod
    def encode(cls, model_path: str, texts: list[str], pooling: str, max_seq_length: int,
               batch_size: int) -> GuideEmbeddings:
        """Embed ``texts`` with the model at ``model_path`` (its own tokenizer, ``pooling``), eval mode."""
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModel.from_pretrained(model_path).eval()
        unique = list(dict.fromkeys(texts))
        embeddings = encode(model, tokenizer, unique, pooling, max_seq_length, batch_size, show_progress=True,
                            description="guide model")
        return cls(unique, embeddings, model_path)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        try:
            return self.embeddings[[self.index[text_id(text)] for text in texts]]
        except KeyError:
            missing = next(text for text in texts if text_id(text) not in self.index)
            raise KeyError(f"the guide model has no embedding of {missing!r}: embed every training and dev text "
                           "before training") from None
