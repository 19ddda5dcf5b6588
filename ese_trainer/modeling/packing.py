"""Padding-free (packed) encoder forward: only real tokens go through embeddings, projections and feed-forward.

A padded batch ``B x T`` becomes one row of its ``N`` real tokens (``1 x N``) with ``position_ids`` restarting at 0
for each text (BERT's absolute position embeddings then see what they saw padded) and the flash-attention varlen
arguments ``cu_seq_lens_q/k`` (cumulative text lengths) and ``max_length_q/k``. Attention stays within each text:

- on a GPU with ``flash-attn`` installed, transformers' ``flash_attention_2`` reads those arguments natively
  (varlen kernels: no padding anywhere);
- elsewhere the attention function registered here as ``packed_sdpa`` lays queries, keys and values out per text
  (``B x H x T x d``, the only padded tensors of the forward) and runs PyTorch's SDPA with a key mask, then gathers
  the real tokens back; called without varlen arguments it is plain ``sdpa``.

Pooling reads the packed states per text: CLS = the first token of each text, mean = a segment sum
(``index_add_``), max = a segment max, last = the last token; every hidden layer alike (ESE's students).
transformers does not detect packed sequences for BERT's bidirectional mask (it builds one mask for the whole row),
which is why the varlen arguments are passed explicitly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils import is_flash_attn_2_available

PACKED_SDPA = "packed_sdpa"
FLASH_VARLEN = "flash_attention_2"
# Encoders whose position embeddings take positions restarting at 0 per text (RoBERTa-style models offset them by
# the padding index, and would need that offset).
PACKABLE_MODEL_TYPES = ("bert", "ese_moe_bert")
PACKED_SETTINGS = ("auto", "true", "false")
# Evaluation batches are length-sorted, so most carry little padding (7% of STS-B test's tokens at 128 texts a
# batch). Packing one pays only above the padding share where the padded compute it saves outweighs its per-layer
# scatter/gather, which weighs more in bf16, where matmuls are cheap (break-even measured on CPU at about 9% in fp32
# and 28% in bf16: ``bench/results/eval_throughput.md``).
EVAL_PACKING_MIN_PADDING = {torch.float32: 0.10, torch.bfloat16: 0.30}


def use_packing(setting: str | bool | None, config) -> bool:
    """``packed`` resolved for a model: ``auto`` (or None) packs every model that supports it — measured faster than
    padded batches on CPU (``bench/train_throughput.py``) and on GPUs with flash-attn's varlen kernels; ``true``
    refuses a model that does not support it."""
    setting = str(setting).lower() if setting is not None else "auto"
    if setting not in (*PACKED_SETTINGS, "none"):
        raise ValueError(f"packed must be one of {PACKED_SETTINGS}, got {setting!r}")
    supported = config.model_type in PACKABLE_MODEL_TYPES
    if setting == "true" and not supported:
        raise ValueError(f"packed: true needs a model of type {PACKABLE_MODEL_TYPES}, got {config.model_type!r}")
    return supported and setting != "false"


def eval_packing(setting: str | bool | None, config) -> bool | None:
    """``packed`` resolved for evaluation: ``True``/``False`` as set, ``None`` for ``auto`` on a model that supports
    packing (each batch then chooses: :func:`packing_pays_off`)."""
    supported = use_packing(setting, config)
    return None if supported and str(setting).lower() in ("auto", "none") else supported


def padding_share(attention_mask: Tensor) -> float:
    """The share of a padded batch's positions that are padding."""
    return 1.0 - float(attention_mask.sum()) / max(attention_mask.numel(), 1)


def packing_pays_off(attention_mask: Tensor, dtype: torch.dtype) -> bool:
    """Whether an inference batch runs faster packed: always with flash-attn's varlen kernels (no padded tensor at
    all), on CPU when its padding share reaches :data:`EVAL_PACKING_MIN_PADDING` for ``dtype``."""
    if packed_attention_name(attention_mask.device) == FLASH_VARLEN:
        return True
    return padding_share(attention_mask) >= EVAL_PACKING_MIN_PADDING.get(dtype, EVAL_PACKING_MIN_PADDING[torch.float32])


@dataclass
class PackedBatch:
    """A padded batch as one row of real tokens: ``inputs`` for the model, and where each text's tokens are.

    ``segments``: the text index of every token (``N``); ``starts``: the first token of each text (``B + 1``
    cumulative offsets, the last = ``N``); ``lengths``: tokens per text.
    """

    inputs: dict[str, Tensor | int]
    segments: Tensor
    starts: Tensor
    lengths: Tensor

    @property
    def num_texts(self) -> int:
        return self.lengths.numel()


def pack(features: dict[str, Tensor]) -> PackedBatch:
    """``input_ids``/``attention_mask`` (and ``token_type_ids``) of a padded batch (right or left padding) as one
    packed row with restarting ``position_ids`` and the varlen arguments."""
    mask = features["attention_mask"].bool()
    lengths = mask.sum(dim=1)
    device = mask.device
    starts = F.pad(lengths.cumsum(0), (1, 0))
    segments = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)
    positions = torch.arange(int(starts[-1]), device=device) - starts[:-1][segments]
    cu = starts.to(torch.int32)
    longest = int(lengths.max())
    inputs: dict[str, Tensor | int] = {"input_ids": features["input_ids"][mask][None],
                                       "position_ids": positions[None], "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
                                       "max_length_q": longest, "max_length_k": longest}
    if features.get("token_type_ids") is not None:
        inputs["token_type_ids"] = features["token_type_ids"][mask][None]
    return PackedBatch(inputs, segments, starts, lengths)


def pool_packed(hidden: Tensor, batch: PackedBatch, mode: str) -> Tensor:
    """Pool packed token states (``1 x N x D``) per text to ``B x D`` — the same as
    :func:`ese_trainer.pooling.pool` on the padded batch."""
    states = hidden.reshape(-1, hidden.shape[-1])
    first, last = batch.starts[:-1], batch.starts[1:] - 1
    if mode == "cls":
        return states.index_select(0, first)
    if mode == "last":
        return states.index_select(0, last)
    if mode in ("mean", "cls_avg"):
        sums = states.new_zeros(batch.num_texts, states.shape[1]).index_add_(0, batch.segments, states)
        mean = sums / batch.lengths.clamp(min=1)[:, None].to(states.dtype)
        return mean if mode == "mean" else (states.index_select(0, first) + mean) / 2
    if mode == "max":
        index = batch.segments[:, None].expand_as(states)
        start = states.new_full((batch.num_texts, states.shape[1]), torch.finfo(states.dtype).min)
        return start.scatter_reduce(0, index, states, "amax", include_self=False)
    raise ValueError(f"unknown pooling {mode!r}")


def packed_sdpa_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                          dropout: float = 0.0, scaling: float | None = None, cu_seq_lens_q: Tensor | None = None,
                          max_length_q: int | None = None, **kwargs) -> tuple[Tensor, None]:
    """Attention within each text of a packed row (``1 x H x N x d``): per-text ``B x H x T x d`` views, PyTorch SDPA
    with a key mask, real tokens gathered back (``1 x N x H x d``). Without ``cu_seq_lens_q``: plain ``sdpa``."""
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    heads, tokens, head_dim = query.shape[1:]
    starts = cu_seq_lens_q.to(query.device, torch.long)
    lengths = starts.diff()
    longest = int(max_length_q) if max_length_q is not None else int(lengths.max())
    texts = lengths.numel()
    # each real token's row in the flattened per-text layout (text * longest + position): one 1-D index serves the
    # scatter of q, k, v (index_copy) and the gather of the output (index_select), both cheaper than 2-D indexing
    segments = torch.repeat_interleave(torch.arange(texts, device=query.device), lengths, output_size=tokens)
    slots = torch.arange(tokens, device=query.device) + (segments * longest - starts[:-1][segments])

    def per_text(x: Tensor) -> Tensor:
        flat = x.new_zeros(texts * longest, heads, head_dim).index_copy(0, slots, x[0].transpose(0, 1))
        return flat.view(texts, longest, heads, head_dim).transpose(1, 2)

    key_is_real = (torch.arange(longest, device=query.device)[None] < lengths[:, None])[:, None, None, :]
    output = F.scaled_dot_product_attention(per_text(query), per_text(key), per_text(value), attn_mask=key_is_real,
                                            dropout_p=dropout if module.training else 0.0, scale=scaling)
    return output.transpose(1, 2).reshape(texts * longest, heads, head_dim).index_select(0, slots).unsqueeze(0), None


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)  # padded batches keep sdpa's mask


def packed_attention_name(device: torch.device) -> str:
    """The attention that runs packed rows on ``device``: flash-attn's varlen kernels when available on a GPU."""
    return FLASH_VARLEN if device.type == "cuda" and is_flash_attn_2_available() else PACKED_SDPA


@contextlib.contextmanager
def packed_attention(model: nn.Module) -> Iterator[None]:
    """Run ``model``'s layers with the packed-row attention for the duration, then restore its own setting (which is
    what gets saved)."""
    config = model.config
    own = config._attn_implementation
    config._attn_implementation = packed_attention_name(next(model.parameters()).device)
    try:
        yield
    finally:
        config._attn_implementation = own
