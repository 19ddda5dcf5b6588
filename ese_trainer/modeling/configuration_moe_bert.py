"""Configuration of a BERT encoder whose feed-forward blocks are routed Mixture-of-Experts layers.

Self-contained (imports only ``transformers``): saved runs carry this file so that
``AutoConfig.from_pretrained(path, trust_remote_code=True)`` works without this package installed.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import BertConfig

MOE_MODEL_TYPE = "ese_moe_bert"
MOE_TYPES = ("upcycled", "residual")
MOE_LAYER_PATTERNS = ("all", "every_2")


@strict
class MoEBertConfig(BertConfig):
    r"""``BertConfig`` plus the routed-experts settings (names as in transformers' own MoE models).

    num_experts (`int`, defaults to 4): experts per MoE layer.
    num_experts_per_tok (`int`, defaults to 2): experts each token is routed to (top-k).
    moe_layers (`str | list[int]`, defaults to ``"all"``): which transformer layers (0-based) get experts:
        ``"all"``, ``"every_2"`` (every second layer: 1, 3, 5, …, as in the Switch Transformer and
        nomic-embed-text-v2-moe, whose ``NomicBertBlock(config, moe=i % moe_every_n_layers == 1)`` with
        ``moe_every_n_layers=2`` puts experts in 6 of its 12 layers; all-MiniLM-L6-v2: 1, 3, 5; its 3-layer cut: 1)
        or a list of indices.
    moe_type (`str`, defaults to ``"upcycled"``): ``upcycled`` — the dense FFN is replaced by
        ``num_experts`` experts (sparse upcycling, Komatsuzaki et al. 2022); ``residual`` — the dense FFN
        stays and small routed experts are added to it: ``FFN(x) + Σ_k g_k(x) E_k(x)``.
    expert_intermediate_size (`int | None`): width of each expert; default ``intermediate_size`` for
        ``upcycled`` (the copies of the FFN) and ``intermediate_size // num_experts`` for ``residual``.
    norm_topk_prob (`bool`, defaults to True): renormalise the top-k router probabilities to sum to 1.
    router_jitter_noise (`float`, defaults to 0.0): multiplicative uniform noise on the router input
        during training (Switch Transformer, Fedus et al. 2021).
    router_aux_loss_coef (`float`, defaults to 0.1): weight of the load-balancing loss, on by default (TRL turned
        its own on, at 0.001, after finding it silently off in most MoE runs; 0.001 is also transformers' Mixtral
        default). Switch used 0.01 beside an LM loss of a few nats; the embedding losses here (scale-20 ranking
        terms) are ~10x larger, and at 0.01 the routing drifted further out of balance while training.
    router_z_loss_coef (`float`, defaults to 0.001): weight of the router z-loss (ST-MoE, Zoph et al. 2022).
    output_router_logits (`bool`, defaults to True): return each MoE layer's router logits
        (non-padding tokens only) in the model output; a model in training mode returns them whatever this says,
        so the router losses cannot be silently off.
    """

    model_type = MOE_MODEL_TYPE

    num_experts: int = 4
    num_experts_per_tok: int = 2
    moe_layers: str | list[int] = "all"
    moe_type: str = "upcycled"
    expert_intermediate_size: int | None = None
    norm_topk_prob: bool = True
    router_jitter_noise: float | int = 0.0
    router_aux_loss_coef: float | int = 0.1
    router_z_loss_coef: float | int = 0.001
    output_router_logits: bool = True

    def __post_init__(self, **kwargs):
        if self.expert_intermediate_size is None:
            upcycled = self.moe_type == "upcycled"
            self.expert_intermediate_size = (
                self.intermediate_size if upcycled else max(1, self.intermediate_size // self.num_experts)
            )
        super().__post_init__(**kwargs)

    @property
    def moe_layer_indices(self) -> list[int]:
        """The 0-based indices of the layers with experts."""
        if self.moe_layers == "all":
            return list(range(self.num_hidden_layers))
        if self.moe_layers == "every_2":
            return list(range(1, self.num_hidden_layers, 2))
        return sorted(self.moe_layers)

    def validate_moe(self) -> None:
        """Part of ``@strict`` validation: every MoE setting checked when the config is built."""
        if self.moe_type not in MOE_TYPES:
            raise ValueError(f"moe_type must be one of {MOE_TYPES}, got {self.moe_type!r}")
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}")
        if not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError(f"num_experts_per_tok must be in 1..num_experts ({self.num_experts}), "
                             f"got {self.num_experts_per_tok}")
        if isinstance(self.moe_layers, str):
            if self.moe_layers not in MOE_LAYER_PATTERNS:
                raise ValueError(f"moe_layers must be one of {MOE_LAYER_PATTERNS} or a list of layer indices, "
                                 f"got {self.moe_layers!r}")
        else:
            outside = [i for i in self.moe_layers if not 0 <= i < self.num_hidden_layers]
            if outside or not self.moe_layers or len(set(self.moe_layers)) != len(self.moe_layers):
                raise ValueError(f"moe_layers {self.moe_layers}: indices must be distinct and in "
                                 f"0..{self.num_hidden_layers - 1} (the model has {self.num_hidden_layers} layers)")
        if self.expert_intermediate_size is not None and self.expert_intermediate_size < 1:
            raise ValueError(f"expert_intermediate_size must be >= 1, got {self.expert_intermediate_size}")
        if self.router_jitter_noise < 0 or self.router_aux_loss_coef < 0 or self.router_z_loss_coef < 0:
            raise ValueError("router_jitter_noise, router_aux_loss_coef and router_z_loss_coef must be >= 0")


__all__ = ["MOE_MODEL_TYPE", "MoEBertConfig"]
