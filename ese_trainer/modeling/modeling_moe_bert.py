"""A BERT encoder with routed Mixture-of-Experts feed-forward blocks.

Self-contained (imports only ``torch``/``transformers`` and the config beside it): saved runs carry this
file, so ``AutoModel.from_pretrained(path, trust_remote_code=True)`` and
``SentenceTransformer(path, trust_remote_code=True)`` work without this package installed.

Routing (Shazeer et al. 2017; Switch Transformer, Fedus et al. 2021): for each non-padding token ``x``,
``p = softmax(W_r x)``; the top-k experts ``K`` get weights ``g_k = p_k`` (renormalised to sum to 1 with
``norm_topk_prob``); the block outputs ``Σ_{k∈K} g_k E_k(x)`` (``upcycled``) or ``FFN(x) + Σ_{k∈K} g_k E_k(x)``
(``residual``). Tokens are grouped per expert with one sort and ``index_add_``; padding tokens are never
routed and their feed-forward output is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions
from transformers.models.bert.modeling_bert import (
    BertEmbeddings,
    BertEncoder,
    BertLayer,
    BertModel,
    BertPooler,
    BertPreTrainedModel,
)

from .configuration_moe_bert import MoEBertConfig


class MoELoadingError(ValueError):
    """Saved weights do not match the MoE architecture (missing, unexpected or mis-shaped keys)."""


@dataclass
class MoEBertModelOutput(BaseModelOutputWithPoolingAndCrossAttentions):
    """BERT's output plus ``router_logits``: one ``N x num_experts`` tensor per MoE layer, N = non-padding tokens."""

    router_logits: tuple[torch.Tensor, ...] | None = None


class BertExpert(nn.Module):
    """One expert: ``down(act(up(x)))``, the shape of BERT's FFN (``hidden → intermediate → hidden``)."""

    def __init__(self, config: MoEBertConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.expert_intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.down = nn.Linear(config.expert_intermediate_size, config.hidden_size)
        # residual experts start as exact zeros, so the model starts as the dense one
        self.down.zero_init = config.moe_type == "residual"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(hidden_states)))


class BertSparseMoeBlock(nn.Module):
    """Top-k routed experts over the non-padding tokens of a ``B x T x H`` batch."""

    def __init__(self, config: MoEBertConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.jitter = config.router_jitter_noise
        self.router = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList(BertExpert(config) for _ in range(config.num_experts))

    def forward(self, hidden_states: torch.Tensor, token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the routed output (``B x T x H``, 0 at padding) and the router logits (``N x E``)."""
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        kept = token_mask.reshape(-1).nonzero().squeeze(1)
        tokens = flat.index_select(0, kept)
        router_input = tokens
        if self.training and self.jitter > 0:
            router_input = tokens * torch.empty_like(tokens).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        router_logits = self.router(router_input)
        probs = F.softmax(router_logits, dim=-1, dtype=torch.float32)
        weights, selected = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(tokens.dtype)
        # One slot per (token, chosen expert); sorting the slots by expert makes each expert's tokens contiguous.
        slot_expert = selected.reshape(-1)
        order = torch.argsort(slot_expert, stable=True)
        slot_token = torch.arange(tokens.shape[0], device=tokens.device).repeat_interleave(self.top_k)[order]
        slot_weight = weights.reshape(-1)[order]
        counts = torch.bincount(slot_expert, minlength=len(self.experts)).tolist()
        routed = torch.zeros_like(tokens)
        # Every expert runs, even on 0 tokens: all parameters stay in the graph (DDP needs no unused-parameter search).
        for expert, token_index, weight in zip(self.experts, slot_token.split(counts), slot_weight.split(counts)):
            routed.index_add_(0, token_index, expert(tokens.index_select(0, token_index)) * weight.unsqueeze(1))
        output = torch.zeros_like(flat).index_copy(0, kept, routed)
        return output.view_as(hidden_states), router_logits


class MoEBertLayer(BertLayer):
    """A ``BertLayer`` whose FFN is :class:`BertSparseMoeBlock` (``upcycled``) or FFN + it (``residual``)."""

    def __init__(self, config: MoEBertConfig, layer_idx: int | None = None) -> None:
        super().__init__(config, layer_idx)
        self.chunk_size_feed_forward = 0  # routing needs the whole sequence at once
        self.residual = config.moe_type == "residual"
        self.moe = BertSparseMoeBlock(config)
        if not self.residual:  # the experts replace the dense FFN; LayerNorm and dropout stay
            del self.intermediate
            del self.output.dense
        self.token_mask: torch.Tensor | None = None
        self.router_logits: torch.Tensor | None = None

    def feed_forward_chunk(self, attention_output: torch.Tensor) -> torch.Tensor:
        mask = self.token_mask
        if mask is None or mask.shape != attention_output.shape[:2]:
            mask = torch.ones(attention_output.shape[:2], dtype=torch.bool, device=attention_output.device)
        ffn, self.router_logits = self.moe(attention_output, mask)
        if self.residual:
            ffn = ffn + self.output.dense(self.intermediate(attention_output))
        return self.output.LayerNorm(self.output.dropout(ffn) + attention_output)


class MoEBertPreTrainedModel(BertPreTrainedModel):
    config_class = MoEBertConfig
    config: MoEBertConfig
    base_model_prefix = "bert"

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, nn.Linear) and getattr(module, "zero_init", False):
            init.zeros_(module.weight)
            init.zeros_(module.bias)


class MoEBertModel(MoEBertPreTrainedModel, BertModel):
    """``BertModel`` with MoE layers at ``config.moe_layer_indices``; the output adds ``router_logits`` (with
    ``config.output_router_logits``, and always in training mode).

    Loading is strict: missing, unexpected or mis-shaped weights raise :class:`MoELoadingError` instead of
    leaving experts at random initialisation.
    """

    _no_split_modules = ["BertEmbeddings", "BertLayer", "MoEBertLayer"]

    def __init__(self, config: MoEBertConfig, add_pooling_layer: bool = True) -> None:
        MoEBertPreTrainedModel.__init__(self, config)
        self.config = config
        self.gradient_checkpointing = False
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        for index in config.moe_layer_indices:
            self.encoder.layer[index] = MoEBertLayer(config, layer_idx=index)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.post_init()

    def moe_layers(self) -> list[MoEBertLayer]:
        return [layer for layer in self.encoder.layer if isinstance(layer, MoEBertLayer)]

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, return_dict: bool | None = None,
                **kwargs) -> MoEBertModelOutput | tuple:
        reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError("MoEBertModel needs the 2D attention mask (batch x tokens) to keep padding unrouted")
        token_mask = (attention_mask.bool() if attention_mask is not None
                      else torch.ones(reference.shape[:2], dtype=torch.bool, device=reference.device))
        moe_layers = self.moe_layers()
        for layer in moe_layers:
            layer.token_mask = token_mask
        outputs = super().forward(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                  return_dict=True, **kwargs)
        # In training always: a trainer computes the load-balancing loss from them, which must never be silently off.
        wanted = self.config.output_router_logits or self.training
        router_logits = tuple(layer.router_logits for layer in moe_layers) if wanted else None
        result = MoEBertModelOutput(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=outputs.pooler_output,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=router_logits,
        )
        return result if return_dict is not False else result.to_tuple()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained`` that refuses missing, unexpected or mis-shaped weights."""
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        unexpected = [key for key in info.get("unexpected_keys", ())
                      if not (model.pooler is None and key.startswith("pooler."))]
        problems = {"missing": sorted(info.get("missing_keys", ())), "unexpected": sorted(unexpected),
                    "mismatched": sorted(str(key) for key in info.get("mismatched_keys", ()))}
        problems = {name: keys for name, keys in problems.items() if keys}
        if problems:
            source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
            details = "; ".join(f"{name} keys: {keys[:8]}{' …' if len(keys) > 8 else ''}"
                                for name, keys in problems.items())
            raise MoELoadingError(f"{source}: weights do not match the MoE config ({details})")
        return (model, info) if wants_info else model


def load_balancing_loss(router_logits: tuple[torch.Tensor, ...], top_k: int) -> torch.Tensor:
    """Switch Transformer auxiliary loss, averaged over MoE layers: ``E · Σ_e f_e · P_e``.

    ``f_e`` = fraction of the top-k assignments that go to expert e, ``P_e`` = mean router probability of e,
    over the layer's (non-padding) tokens. Equals 1 for perfectly uniform routing.
    """
    losses = []
    for logits in router_logits:
        if logits.shape[0] == 0:
            continue
        num_experts = logits.shape[-1]
        probs = F.softmax(logits, dim=-1, dtype=torch.float32)
        selected = probs.topk(top_k, dim=-1).indices
        fractions = torch.bincount(selected.reshape(-1), minlength=num_experts).float() / selected.numel()
        losses.append(num_experts * (fractions * probs.mean(dim=0)).sum())
    return torch.stack(losses).mean() if losses else router_logits[0].new_zeros((), dtype=torch.float32)


def router_z_loss(router_logits: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """ST-MoE router z-loss (Zoph et al. 2022), averaged over MoE layers: ``mean_tokens (log Σ_e exp z_e)²``."""
    losses = [torch.logsumexp(logits.float(), dim=-1).pow(2).mean() for logits in router_logits if logits.shape[0]]
    return torch.stack(losses).mean() if losses else router_logits[0].new_zeros((), dtype=torch.float32)


MoEBertConfig.register_for_auto_class()
MoEBertModel.register_for_auto_class("AutoModel")

__all__ = ["MoEBertModel", "MoEBertModelOutput", "MoELoadingError", "load_balancing_loss", "router_z_loss"]
