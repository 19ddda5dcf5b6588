"""Masked pooling of token states into one sentence embedding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

POOLING_MODES = ("cls", "mean", "cls_avg", "max", "last")

# sentence-transformers' own Pooling mode for each of ours; ``cls_avg`` is saved as ST's cls + mean pooling
# followed by a fixed averaging layer (see :func:`ese_trainer.export.pooling_modules`).
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


@dataclass
class EncodedBatch:
    """What one training batch's forward passes produce, rows in input order.

    ``embeddings``: pooled last-layer states (``N x D``); ``layer_embeddings``: pooled ``hidden_states[ℓ]`` for
    each requested layer ℓ (1 = first transformer layer); ``router_logits``: per MoE layer, the router logits of
    every non-padding token of the batch (``None`` for a dense model).
    """

    embeddings: Tensor
    layer_embeddings: dict[int, Tensor] = field(default_factory=dict)
    router_logits: tuple[Tensor, ...] | None = None


def encode_batch(model: torch.nn.Module, inputs: dict[str, Tensor], mode: str, chunks: int = 1,
                 layers: Sequence[int] = ()) -> EncodedBatch:
    """Pooled embeddings of every row of a padded batch (last layer and ``layers``), plus MoE router logits.

    With ``chunks > 1`` the rows are sorted by length and run through ``model`` in that many groups, each
    trimmed to the columns its rows use: in a batch of pairs whose sides differ in length (NLI premises
    are about twice as long as hypotheses) this removes most of the padding compute. Each row's embedding
    does not depend on its neighbours, so the result equals the single pass up to float rounding.
    """
    mask = inputs["attention_mask"]
    extra = {"output_hidden_states": True} if layers else {}
    order = torch.argsort(mask.sum(dim=1), descending=True, stable=True) if chunks > 1 else None
    groups = order.chunk(chunks) if order is not None else [None]
    pooled: list[Tensor] = []
    per_layer: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    router: list[tuple[Tensor, ...]] = []
    for rows in groups:
        if rows is None:
            group = inputs
        else:
            used = torch.nonzero(mask[rows].any(dim=0)).flatten()
            columns = slice(int(used[0]), int(used[-1]) + 1)
            group = {key: value[rows, columns] for key, value in inputs.items()}
        outputs = model(**group, **extra)
        pooled.append(pool(outputs.last_hidden_state, group["attention_mask"], mode))
        for layer in layers:
            per_layer[layer].append(pool(outputs.hidden_states[layer], group["attention_mask"], mode))
        if getattr(outputs, "router_logits", None) is not None:
            router.append(outputs.router_logits)

    def in_row_order(parts: list[Tensor]) -> Tensor:
        return parts[0] if order is None else torch.cat(parts)[torch.argsort(order)]

    return EncodedBatch(
        embeddings=in_row_order(pooled),
        layer_embeddings={layer: in_row_order(parts) for layer, parts in per_layer.items()},
        # token order does not matter for router statistics and losses: concatenate the chunks' tokens
        router_logits=tuple(torch.cat(layer_logits) for layer_logits in zip(*router)) if router else None,
    )


def pooled_embeddings(model: torch.nn.Module, inputs: dict[str, Tensor], mode: str, chunks: int = 1) -> Tensor:
    """Pooled last-layer embeddings (``N x D``) of every row of a padded batch, in row order
    (see :func:`encode_batch`)."""
    return encode_batch(model, inputs, mode, chunks).embeddings
