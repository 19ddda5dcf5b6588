"""A sentence encoder for training: a transformer, its pooling, and how a batch of texts runs through it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ese_trainer.modeling.packing import pack, packed_attention, pool_packed
from ese_trainer.modeling.pooling import check_pooling, pool

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class EncodedBatch:
    """What one batch's forward passes produce, rows in input order.

    ``embeddings``: pooled last-layer states (``N x D``; for a batch of pairs the first sides, then the second
    sides); ``layer_embeddings``: pooled ``hidden_states[ℓ]`` for each requested layer ℓ (1 = first transformer
    layer); ``router_logits``: per MoE layer, the router logits of every real (non-padding) token (``None`` for a
    dense model).
    """

    embeddings: Tensor
    layer_embeddings: dict[int, Tensor] = field(default_factory=dict)
    router_logits: tuple[Tensor, ...] | None = None


class SentenceEncoder(nn.Module):
    """``transformer`` (a Hugging Face encoder) + masked ``pooling``: texts in, :class:`EncodedBatch` out.

    A padded batch runs in ``forward_chunks`` length-sorted groups of rows, each trimmed to the columns its rows
    use: in a batch of pairs whose sides differ in length (NLI premises are about twice as long as hypotheses) this
    removes most of the padding compute. Each row's embedding does not depend on its neighbours, so the result
    equals one pass up to float rounding. ``packed`` runs the batch padding-free instead (one row of its real
    tokens, attention within each text: :mod:`ese_trainer.modeling.packing`). ``pooled_layers`` are the shallower
    layers whose pooled states are wanted too (ESE's students). ``embedding_dim`` keeps the first dims of the last
    layer's embedding (an embedding trained at that size, like sentence-transformers' ``truncate_dim``).
    """

    def __init__(self, transformer: nn.Module, pooling: str = "mean", forward_chunks: int = 2,
                 pooled_layers: Sequence[int] = (), packed: bool = False, embedding_dim: int | None = None) -> None:
        super().__init__()
        if forward_chunks < 1:
            raise ValueError(f"forward_chunks must be >= 1, got {forward_chunks}")
        self.transformer = transformer
        self.pooling = check_pooling(pooling)
        self.forward_chunks = forward_chunks
        self.pooled_layers = list(pooled_layers)
        self.packed = packed
        self.embedding_dim = embedding_dim

    @property
    def config(self):
        return self.transformer.config

    def forward(self, features: dict[str, Tensor]) -> EncodedBatch:
        inputs = {key: value for key, value in features.items() if key in MODEL_INPUT_KEYS}
        encoded = self._packed(inputs) if self.packed else self._padded(inputs)
        if self.embedding_dim is not None:
            encoded.embeddings = encoded.embeddings[:, :self.embedding_dim]
        return encoded

    def _packed(self, inputs: dict[str, Tensor]) -> EncodedBatch:
        """One forward over the batch's real tokens only (:mod:`ese_trainer.modeling.packing`)."""
        batch = pack(inputs)
        with packed_attention(self.transformer):
            outputs = self.transformer(**batch.inputs, output_hidden_states=bool(self.pooled_layers))
        return EncodedBatch(
            embeddings=pool_packed(outputs.last_hidden_state, batch, self.pooling),
            layer_embeddings={layer: pool_packed(outputs.hidden_states[layer], batch, self.pooling)
                              for layer in self.pooled_layers},
            router_logits=getattr(outputs, "router_logits", None),
        )

    def _padded(self, inputs: dict[str, Tensor]) -> EncodedBatch:
        mask = inputs["attention_mask"]
        layers = self.pooled_layers
        extra = {"output_hidden_states": True} if layers else {}
        chunks = self.forward_chunks
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
            outputs = self.transformer(**group, **extra)
            pooled.append(pool(outputs.last_hidden_state, group["attention_mask"], self.pooling))
            for layer in layers:
                per_layer[layer].append(pool(outputs.hidden_states[layer], group["attention_mask"], self.pooling))
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
