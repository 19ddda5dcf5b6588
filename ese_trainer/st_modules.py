"""sentence-transformers modules for poolings ST lacks, so saved models load with ``SentenceTransformer``."""

from __future__ import annotations

from typing import Any

import torch
from sentence_transformers.base.modules.module import Module

from ese_trainer.pooling import pool


class CLSAvgPooling(Module):
    """``(h_[CLS] + mean_t h_t) / 2`` over unmasked tokens: AnglE's ``cls_avg`` pooling."""

    config_keys: list[str] = ["embedding_dimension"]

    def __init__(self, embedding_dimension: int) -> None:
        super().__init__()
        self.embedding_dimension = embedding_dimension

    def forward(self, features: dict[str, torch.Tensor | Any], **kwargs) -> dict[str, torch.Tensor | Any]:
        tokens = features["token_embeddings"]
        mask = features.get("attention_mask")
        if mask is None or mask.shape[-1] != tokens.shape[1]:
            mask = torch.ones(tokens.shape[:-1], dtype=torch.long, device=tokens.device)
        features["sentence_embedding"] = pool(tokens, mask, "cls_avg")
        return features

    def get_embedding_dimension(self) -> int:
        return self.embedding_dimension

    def get_sentence_embedding_dimension(self) -> int:
        return self.embedding_dimension

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)
