"""Padding-free (packed) encoder forward: only real tokens go through embeddings, projections and feed-forward.

A padded batch ``B x T`` becomes one row of its ``N`` real tokens (``1 x N``) with ``position_ids`` restarting at 0
for each text (BERT's absolute position embeddings then see what they saw padded) and the flash-attention varlen
arguments ``cu_seq_lens_q/k`` (cumulative text lengths) and ``max_length_q/k``. Attention stays within each text:

- on a GPU with ``flash-attn`` installed, transformers' ``flash_attention_2`` reads those arguments natively
  (varlen kernels: no padding anywhere);
- elsewhere the attention function registered here as ``packed_sdpa`` lays queries, keys and values out per text
  and runs PyTorch's SDPA with a key mask, then gathers the real tokens back; called without varlen arguments it
  is plain ``sdpa``. The texts are split by length into at most :data:`ATTENTION_GROUPS` groups, each padded only
  to its own longest text (``B_g x H x T_g x d``, the only padded tensors of the forward), one SDPA call per group:
  the groups are the contiguous runs of the sorted lengths that minimise the padded score grid ``sum_g B_g T_g^2``
  (an exact dynamic programme over the distinct lengths). :func:`pack` computes this layout once per forward
  (:class:`AttentionLayout`) and every layer reuses it. Each text's keys stay its own, so the result is the one
  padded attention gives, up to float rounding. Training on CPU with attention dropout in bf16 (or fp16), a group
  runs :func:`math_attention` instead of SDPA: the same dropout masks, the products in bf16 as under autocast
  elsewhere (SDPA's CPU math path computes them in float32, more slowly).

Pooling reads the packed states per text: CLS = the first token of each text, mean = a segment sum
(``index_add_``), max = a segment max, last = the last token; every hidden layer alike (ESE's students).
transformers does not detect packed sequences for BERT's bidirectional mask (it builds one mask for the whole row),
which is why the varlen arguments are passed explicitly.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils import is_flash_attn_2_available

from ese_trainer.modeling.fast_dropout import FastDropout, fast_dropout

PACKED_SDPA = "packed_sdpa"
# packed_sdpa's attention: at most this many SDPA calls per layer, over length groups (each padded to its longest)
ATTENTION_GROUPS = 4
LAYOUT_KEY = "packed_attention_layout"  # the model input (passed on to every layer) that carries the layout
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


@dataclass(frozen=True)
class AttentionLayout:
    """Where a packed row's tokens sit in :func:`packed_sdpa_attention`'s padded per-group grids.

    Group ``g`` holds ``texts_g`` texts padded to ``longest_g`` positions: a grid of ``texts_g x longest_g`` rows
    (one per position), the groups' grids laid end to end. ``slots``: every token's row there (``N``);
    ``shapes``: ``(texts_g, longest_g)`` per group; ``key_masks``: per group, which key positions are real
    (``texts_g x 1 x 1 x longest_g``; ``None`` where every text of the group has its longest length).
    """

    slots: Tensor
    shapes: tuple[tuple[int, int], ...]
    key_masks: tuple[Tensor | None, ...]

    @property
    def grid_rows(self) -> int:
        return sum(texts * longest for texts, longest in self.shapes)

    @property
    def score_grid(self) -> int:
        """The attention score elements per head, ``sum_g texts_g x longest_g^2`` (padding included)."""
        return sum(texts * longest * longest for texts, longest in self.shapes)


def length_groups(lengths: list[int], max_groups: int = ATTENTION_GROUPS) -> list[int]:
    """The longest length of each of at most ``max_groups`` groups of ``lengths`` (ascending; a text joins the first
    group whose bound it fits) that minimise the padded score grid ``sum_g count_g x bound_g^2``.

    Groups are contiguous runs of the sorted lengths (an optimal grouping always is: swapping a longer text into a
    shorter group never shrinks it), found by dynamic programming over the distinct lengths, ``O(G U^2)``."""
    if max_groups < 1:
        raise ValueError(f"max_groups must be >= 1, got {max_groups}")
    distinct = sorted(set(lengths))
    if len(distinct) <= max_groups:
        return distinct
    values = torch.tensor(distinct, dtype=torch.float64)
    counts = torch.tensor([lengths.count(value) for value in distinct], dtype=torch.float64)
    prefix = F.pad(counts.cumsum(0), (1, 0))  # prefix[j]: texts among the j shortest distinct lengths
    end = torch.arange(len(distinct) + 1)
    # cost[i, j]: the texts of distinct lengths i..j-1 as one group, padded to distinct[j - 1]
    cost = (prefix[None, :] - prefix[:, None]) * F.pad(values.square(), (1, 0))[None, :]
    cost = cost.masked_fill(end[:, None] >= end[None, :], math.inf)
    best, choices = cost[0], []
    for _ in range(max_groups - 1):
        best, choice = (best[:, None] + cost).min(dim=0)
        choices.append(choice)
    bounds, j = [], len(distinct)
    for choice in reversed(choices):
        bounds.append(distinct[j - 1])
        j = int(choice[j])
    bounds.append(distinct[j - 1])
    return bounds[::-1]


def attention_layout(lengths: list[int], device: torch.device, max_groups: int = ATTENTION_GROUPS
                     ) -> AttentionLayout:
    """The :class:`AttentionLayout` of texts of these ``lengths`` (in packed order), grouped by
    :func:`length_groups`."""
    bounds = length_groups(lengths, max_groups)
    members: list[list[int]] = [[] for _ in bounds]
    for text, length in enumerate(lengths):
        members[bisect.bisect_left(bounds, length)].append(text)
    members = [texts for texts in members if texts]
    shapes = tuple((len(texts), max(lengths[text] for text in texts)) for texts in members)
    base = [0] * len(lengths)  # each text's first grid row
    offset = 0
    for texts, (_, longest) in zip(members, shapes):
        for rank, text in enumerate(texts):
            base[text] = offset + rank * longest
        offset += len(texts) * longest
    starts = [0, *itertools.accumulate(lengths)]
    tokens = starts[-1]
    segments = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths), output_size=tokens)
    positions = torch.arange(tokens) - torch.tensor(starts[:-1])[segments]
    slots = (torch.tensor(base)[segments] + positions).to(device)
    key_masks = []
    for texts, (_, longest) in zip(members, shapes):
        group_lengths = torch.tensor([lengths[text] for text in texts], device=device)
        real = torch.arange(longest, device=device)[None] < group_lengths[:, None]
        key_masks.append(None if min(lengths[text] for text in texts) == longest else real[:, None, None, :])
    return AttentionLayout(slots, shapes, tuple(key_masks))


@dataclass
class PackedBatch:
    """A padded batch as one row of real tokens: ``inputs`` for the model, and where each text's tokens are.

    ``segments``: the text index of every token (``N``); ``starts``: the first token of each text (``B + 1``
    cumulative offsets, the last = ``N``); ``lengths``: tokens per text.
    """

    inputs: dict[str, Tensor | int | AttentionLayout]
    segments: Tensor
    starts: Tensor
    lengths: Tensor

    @property
    def num_texts(self) -> int:
        return self.lengths.numel()


def pack(features: dict[str, Tensor]) -> PackedBatch:
    """``input_ids``/``attention_mask`` (and ``token_type_ids``) of a padded batch (right or left padding) as one
    packed row with restarting ``position_ids`` and the varlen arguments; where ``packed_sdpa`` runs the attention,
    also its :class:`AttentionLayout` (under :data:`LAYOUT_KEY`, computed once for every layer)."""
    mask = features["attention_mask"].bool()
    lengths = mask.sum(dim=1)
    device = mask.device
    starts = F.pad(lengths.cumsum(0), (1, 0))
    segments = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)
    positions = torch.arange(int(starts[-1]), device=device) - starts[:-1][segments]
    cu = starts.to(torch.int32)
    host_lengths = lengths.tolist()
    longest = max(host_lengths)
    inputs: dict[str, Tensor | int | AttentionLayout] = {
        "input_ids": features["input_ids"][mask][None], "position_ids": positions[None], "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}
    if features.get("token_type_ids") is not None:
        inputs["token_type_ids"] = features["token_type_ids"][mask][None]
    if packed_attention_name(device) == PACKED_SDPA:
        inputs[LAYOUT_KEY] = attention_layout(host_lengths, device)
    return PackedBatch(inputs, segments, starts, lengths)


def pool_packed(hidden: Tensor, batch: PackedBatch, mode: str) -> Tensor:
    """Pool packed token states (``1 x N x D``) per text to ``B x D`` — the same as
    :func:`ese_trainer.modeling.pooling.pool` on the padded batch."""
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


@torch.compiler.disable  # its shapes are the batch's (group sizes, lengths): compiled layers run it eagerly
def packed_sdpa_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                          dropout: float = 0.0, scaling: float | None = None, cu_seq_lens_q: Tensor | None = None,
                          packed_attention_layout: AttentionLayout | None = None, **kwargs) -> tuple[Tensor, None]:
    """Attention within each text of a packed row (``1 x H x N x d``): queries, keys and values scattered into the
    length groups' padded grids (one ``index_copy`` each), one PyTorch SDPA call per group with its key mask, the
    real tokens gathered back (``1 x N x H x d``, one ``index_select``). The layout comes from :func:`pack`, or from
    ``cu_seq_lens_q`` when the caller packed on its own. Without ``cu_seq_lens_q``: plain ``sdpa``."""
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    layout = packed_attention_layout
    if layout is None:
        layout = attention_layout(cu_seq_lens_q.diff().tolist(), query.device)
    heads, _, head_dim = query.shape[1:]
    sizes = [texts * longest for texts, longest in layout.shapes]

    def grids(x: Tensor) -> list[Tensor]:
        flat = x.new_zeros(layout.grid_rows, heads, head_dim).index_copy(0, layout.slots, x[0].transpose(0, 1))
        return [part.view(texts, longest, heads, head_dim).transpose(1, 2)
                for part, (texts, longest) in zip(flat.split(sizes), layout.shapes)]

    dropout = dropout if module.training else 0.0
    attend = F.scaled_dot_product_attention
    if dropout > 0.0 and query.device.type == "cpu":  # SDPA's CPU math path: float32 for bf16 inputs, and slower
        if isinstance(getattr(module, "dropout", None), FastDropout):
            attend = fast_dropout_attention
        elif query.dtype in (torch.bfloat16, torch.float16):
            attend = math_attention
    outputs = [attend(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling)
               for q, k, v, mask in zip(grids(query), grids(key), grids(value), layout.key_masks)]
    flat = torch.cat([output.transpose(1, 2).reshape(-1, heads, head_dim) for output in outputs])
    return flat.index_select(0, layout.slots).unsqueeze(0), None


def math_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None, dropout_p: float,
                   scale: float | None, drop=F.dropout) -> Tensor:
    """Attention (``softmax(q k^T scale + mask) v``, Vaswani et al., 2017) in the inputs' dtype with the softmax in
    float32, as transformers' eager attention runs under autocast, the probabilities dropped by ``drop``. With
    ``F.dropout`` it draws the very masks PyTorch's SDPA draws (the same ``bernoulli_`` call on the same shape), where
    SDPA's CPU math path computes bf16 inputs in float32, more slowly. ``attn_mask``: boolean, True where a key takes
    part."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * (query.shape[-1] ** -0.5 if scale is None else scale)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    probabilities = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(drop(probabilities, dropout_p), value)


def fast_dropout_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None, dropout_p: float,
                           scale: float | None) -> Tensor:
    """:func:`math_attention` with the attention probabilities dropped by
    :func:`~ese_trainer.modeling.fast_dropout.fast_dropout` instead of ``bernoulli_``."""
    return math_attention(query, key, value, attn_mask, dropout_p, scale, drop=fast_dropout)


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
