"""Masked pooling of token states into one sentence embedding."""

from __future__ import annotations

import torch
from torch import Tensor

POOLING_MODES = ("cls", "mean", "cls_avg", "max", "last")

# sentence-transformers' own Pooling mode for each of ours; ``cls_avg`` is saved as ST's cls + mean pooling
# followed by a fixed averaging layer (see :func:`ese_trainer.release.export.pooling_modules`).
ST_POOLING_MODES = {"cls": "cls", "mean": "mean", "max": "max", "last": "lasttoken"}


def check_pooling(mode: str) -> str:
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling {mode!r}; choose one of {', '.join(POOLING_MODES)}")
    return mode


def pool(hidden_states: Tensor, attention_mask: Tensor, mode: str) -> Tensor:
    """Pool ``B x T x D`` token states to ``B x D``, ignoring padding (``attention_mask == 0``).

    - ``cls``: the first token's state (BERT's [CLS]).
    - ``mean``: ``Σ_t m_t h_t / Σ_t m_t`` (SBERT, Reimers & Gurevych 2019).
    - ``cls_avg``: ``(cls + mean) / 2`` (AnglE's evaluation pooling).
    - ``max``: element-wise max over unmasked tokens.
    - ``last``: the state of the last unmasked token (right or left padding).
    """
    mask = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    if mode == "cls":
        return hidden_states[:, 0]
    if mode in ("mean", "cls_avg"):
        mean = (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return mean if mode == "mean" else (hidden_states[:, 0] + mean) / 2
    if mode == "max":
        return hidden_states.masked_fill(mask == 0, torch.finfo(hidden_states.dtype).min).max(dim=1).values
    if mode == "last":
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last_index = (attention_mask.bool() * positions).argmax(dim=1)
        return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last_index]
    raise ValueError(f"unknown pooling {mode!r}; choose one of {', '.join(POOLING_MODES)}")
