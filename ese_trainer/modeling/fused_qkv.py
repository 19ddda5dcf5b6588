"""Queries, keys and values of BERT self-attention from one projection.

BERT projects the same hidden states three times (``query``, ``key``, ``value``: three ``nn.Linear``). Here one
``F.linear`` with the three weights stacked (``[W_q; W_k; W_v]``, ``3h x h``, and the biases likewise) computes all
three: one GEMM forward and two backward instead of three each, the input gradient summed inside its GEMM, and
under bf16 autocast the (float32, layer-normed) hidden states cast once instead of once per projection. Queries,
keys and values are views of its output, so the attention function (SDPA, packed, flash varlen) receives them as
before. The three ``nn.Linear`` keep their parameters: the state dict, checkpoints, the saved model and the
optimizer's parameter groups do not change. The outputs equal the three projections' up to float rounding.

DeepSpeed ZeRO-3 gathers a module's partitioned weights only when that module runs; its weights (marked ``ds_id``)
therefore take BERT's own forward, through the three modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import BertSelfAttention, eager_attention_forward

CACHE_KEYS = ("cache", "past_key_values")  # a decoder's key/value cache, by its name now and before


class FusedQKVSelfAttention(BertSelfAttention):
    """``BertSelfAttention`` computing Q, K and V with one stacked projection; an encoder's self-attention only (a
    decoder's cache, a projection without bias or ZeRO-3 partitioned weights take BERT's own forward)."""

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None, **kwargs) -> tuple[Tensor, Tensor]:
        projections = (self.query, self.key, self.value)
        if self.is_decoder or any(kwargs.get(key) is not None for key in CACHE_KEYS) or any(
                projection.bias is None or hasattr(projection.weight, "ds_id") for projection in projections):
            return super().forward(hidden_states, attention_mask, **kwargs)
        for key in CACHE_KEYS:
            kwargs.pop(key, None)
        input_shape = hidden_states.shape[:-1]
        stacked = F.linear(hidden_states, torch.cat([projection.weight for projection in projections]),
                           torch.cat([projection.bias for projection in projections]))
        query, key, value = (states.transpose(1, 2) for states in stacked.view(
            *input_shape, 3, -1, self.attention_head_size).unbind(-3))
        name = self.config._attn_implementation
        attention = eager_attention_forward if name == "eager" else ALL_ATTENTION_FUNCTIONS[name]
        output, weights = attention(self, query, key, value, attention_mask,
                                    dropout=self.dropout.p if self.training else 0.0, scaling=self.scaling, **kwargs)
        return output.reshape(*input_shape, -1).contiguous(), weights


def fuse_qkv(model: nn.Module) -> int:
    """Make every ``BertSelfAttention`` of ``model`` a :class:`FusedQKVSelfAttention` in place (same parameters);
    the number changed."""
    fused = 0
    for module in model.modules():
        if type(module) is BertSelfAttention:
            module.__class__ = FusedQKVSelfAttention
            fused += 1
    return fused
