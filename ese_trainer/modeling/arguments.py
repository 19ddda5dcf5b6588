"""The ``model`` arguments (the encoder, its pooling and forward) and the ``moe:`` section (an MoE encoder)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ese_trainer.config.sections import set_fields
from ese_trainer.modeling.configuration_moe_bert import MOE_TYPES, MoEBertConfig
from ese_trainer.modeling.packing import PACKED_SETTINGS
from ese_trainer.modeling.pooling import check_pooling


@dataclass
class ModelArguments:
    """The encoder: which checkpoint, how its token states are pooled, how long its inputs may be."""

    _argument_group_name = "model"

    model_name_or_path: str = field(
        default="sentence-transformers/all-MiniLM-L6-v2", metadata={"help": "Hub id or local folder of the encoder."}
    )
    pooling: str = field(default="mean", metadata={"help": "cls, mean, cls_avg, max or last (all masked)."})
    max_seq_length: int = field(default=128, metadata={"help": "Truncation length in tokens."})
    embedding_dim: int | None = field(
        default=None, metadata={"help": "Train and release embeddings of the first this many dims (the released "
                                "folder's truncate_dim); default: all."}
    )
    packed: str = field(
        default="auto", metadata={"help": "Padding-free forward (only real tokens through the encoder, attention "
                                  "within each text): auto (every BERT-type encoder, the faster path measured), true "
                                  "or false (padded batches in forward_chunks)."}
    )
    forward_chunks: int = field(
        default=2, metadata={"help": "With padded batches: forward passes per batch, over length-sorted groups of "
                             "its texts (less padding; 1 = one pass over the whole padded batch)."}
    )
    attention_dropout: float | None = field(
        default=None, metadata={"help": "Dropout on the attention probabilities while training; default: the "
                                "checkpoint's (0.1 for BERTs). 0 lets PyTorch's SDPA take its fused flash kernel on "
                                "CPU (forward and backward), which refuses any dropout."}
    )
    fast_dropout: bool = field(
        default=False, metadata={"help": "CPU: draw dropout masks (hidden states and, packed, attention "
                                 "probabilities) four elements per 64-bit random draw instead of one (bernoulli_); the "
                                 "same expectation, p rounded to 1/65536, another random stream "
                                 "(ese_trainer/modeling/fast_dropout.py)."}
    )
    compile_layers: bool = field(
        default=False, metadata={"help": "torch.compile each transformer layer (dynamic shapes; packing and pooling "
                                 "stay eager). bench/compile_step.py measures compile time, step time, recompiles "
                                 "and graph breaks."}
    )

    def __post_init__(self) -> None:
        check_pooling(self.pooling)
        if self.attention_dropout is not None and not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")
        if str(self.packed).lower() not in PACKED_SETTINGS:
            raise ValueError(f"packed must be one of {PACKED_SETTINGS}, got {self.packed!r}")
        if self.forward_chunks < 1:
            raise ValueError(f"forward_chunks must be >= 1, got {self.forward_chunks}")
        if self.embedding_dim is not None and self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        if self.max_seq_length <= 0:
            raise ValueError(f"max_seq_length must be positive, got {self.max_seq_length}")


@dataclass
class MoEArguments:
    """The ``moe:`` section: convert the (dense BERT) checkpoint into a Mixture-of-Experts encoder
    (:func:`ese_trainer.modeling.build_moe`). Unset keys take :class:`~ese_trainer.modeling.MoEBertConfig`'s
    defaults, shown in each key's help."""

    _argument_group_name = "moe (YAML section moe:, or --moe.key)"

    moe_enabled: bool = field(default=False, metadata={"help": "Build an MoE encoder from model_name_or_path."})
    moe_num_experts: int | None = field(
        default=None, metadata={"help": f"Experts per MoE layer ({MoEBertConfig.num_experts})."})
    moe_num_experts_per_tok: int | None = field(
        default=None, metadata={"help": f"Top-k experts per token ({MoEBertConfig.num_experts_per_tok})."})
    moe_layers: list[str] | None = field(
        default=None, metadata={"help": "all, every_2 (every second layer: 1, 3, ..., nomic-embed-text-v2-moe's "
                                f"placement) or 0-based layer indices ({MoEBertConfig.moe_layers})."})
    moe_type: str | None = field(
        default=None, metadata={"help": f"{' or '.join(MOE_TYPES)} ({MoEBertConfig.moe_type})."})
    moe_expert_intermediate_size: int | None = field(
        default=None, metadata={"help": "Expert width (upcycled: the dense FFN's; residual: its 1/num_experts)."})
    moe_norm_topk_prob: bool | None = field(
        default=None, metadata={"help": f"Renormalise top-k weights ({MoEBertConfig.norm_topk_prob})."})
    moe_router_jitter_noise: float | None = field(
        default=None, metadata={"help": f"Router input jitter ({MoEBertConfig.router_jitter_noise})."})
    moe_router_aux_loss_coef: float | None = field(
        default=None, metadata={"help": "Load-balancing weight, logged as loss_router_aux; 0 turns it off "
                                f"({MoEBertConfig.router_aux_loss_coef})."})
    moe_router_z_loss_coef: float | None = field(
        default=None, metadata={"help": f"Router z-loss weight ({MoEBertConfig.router_z_loss_coef})."})
    moe_router_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the (freshly initialised) routers; default: learning_rate. "
                                "Fine-tuning rates leave a new router near its random start."}
    )

    def __post_init__(self) -> None:
        stray = set_fields(self, "moe_")
        if stray and not self.moe_enabled:
            keys = ", ".join("moe." + name.removeprefix("moe_") for name in stray)
            raise ValueError(f"{keys} set but moe.enabled is false: enable MoE or remove the key(s)")

    def moe_settings(self) -> dict:
        """The set keys as :class:`~ese_trainer.modeling.MoEBertConfig` fields."""
        settings = {}
        for name in set_fields(self, "moe_"):
            if name == "moe_router_learning_rate":  # an optimizer setting, not part of the model
                continue
            value = getattr(self, name)
            if name == "moe_layers":
                value = value[0] if len(value) == 1 and not value[0].lstrip("-").isdigit() else [int(v) for v in value]
                settings["moe_layers"] = value
            elif name == "moe_type":
                settings["moe_type"] = value
            else:
                settings[name.removeprefix("moe_")] = value
        return settings
