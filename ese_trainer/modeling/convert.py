"""Convert a dense BERT checkpoint into :class:`MoEBertModel`, preserving its function at initialisation.

- ``upcycled`` (sparse upcycling, Komatsuzaki et al. 2022): every expert of a chosen layer is a copy of that
  layer's dense FFN. With renormalised top-k weights (``Σ_k g_k = 1``) the routed sum equals the FFN.
- ``residual``: the dense FFN is kept; each expert's output projection starts at zero, so the routed term
  adds exactly 0 until training moves it.
The router is freshly initialised (normal, ``initializer_range``); everything else is the checkpoint's.
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoConfig, AutoModel, BertConfig

from ese_trainer.hub_models import resolve_model_path
from ese_trainer.modeling.configuration_moe_bert import MOE_MODEL_TYPE, MoEBertConfig
from ese_trainer.modeling.modeling_moe_bert import MoEBertModel

_DENSE_FFN_KEY = re.compile(r"^encoder\.layer\.(\d+)\.(intermediate|output)\.dense\.(weight|bias)$")
_EXPERT_PROJECTION = {"intermediate": "up", "output": "down"}


class MoEConversionError(ValueError):
    """The checkpoint or the MoE settings cannot give a function-preserving MoE model."""


def is_moe_model(model_path: str | Path) -> bool:
    """Whether a (resolved) model folder already holds an MoE BERT."""
    config_file = Path(model_path) / "config.json"
    return config_file.is_file() and f'"{MOE_MODEL_TYPE}"' in config_file.read_text(encoding="utf-8")


def moe_config_from_dense(dense_config: BertConfig, **moe_settings) -> MoEBertConfig:
    """The dense config's architecture + the MoE settings, validated (errors name the setting)."""
    base = {key: value for key, value in dense_config.to_dict().items()
            if key in BertConfig.__dataclass_fields__ and key != "model_type"}
    try:
        config = MoEBertConfig(**base, **moe_settings)
    except (ValueError, TypeError, StrictDataclassClassValidationError) as error:
        cause = error.__cause__ or error  # the config's validator wraps the ValueError that names the setting
        raise MoEConversionError(f"invalid MoE settings: {cause}") from None
    if config.moe_type == "upcycled":
        if not config.norm_topk_prob:
            raise MoEConversionError("moe_type upcycled needs norm_topk_prob: true (the copies of the dense FFN sum "
                                     "back to it only when the top-k weights sum to 1)")
        if config.expert_intermediate_size != dense_config.intermediate_size:
            raise MoEConversionError(f"moe_type upcycled copies the dense FFN: expert_intermediate_size must be "
                                     f"{dense_config.intermediate_size} (or unset), got "
                                     f"{config.expert_intermediate_size}")
    config.architectures = [MoEBertModel.__name__]
    return config


def build_moe(model_name_or_path: str, **moe_settings) -> MoEBertModel:
    """An :class:`MoEBertModel` from a BERT checkpoint (Hub id or folder); its embeddings equal the dense one's.

    ``moe_settings`` are :class:`MoEBertConfig` fields (``num_experts``, ``num_experts_per_tok``, ``moe_layers``,
    ``moe_type``, ``expert_intermediate_size``, ``norm_topk_prob``, ``router_jitter_noise``,
    ``router_aux_loss_coef``, ``router_z_loss_coef``, ``output_router_logits``).
    """
    path = resolve_model_path(model_name_or_path)
    dense_config = AutoConfig.from_pretrained(path)
    if dense_config.model_type != "bert":
        raise MoEConversionError(f"{model_name_or_path}: model_type {dense_config.model_type!r}; MoE conversion "
                                 "needs a BERT checkpoint (model_type 'bert')")
    config = moe_config_from_dense(dense_config, **moe_settings)
    dense = AutoModel.from_pretrained(path)
    model = MoEBertModel(config)
    moe_layers = set(config.moe_layer_indices)
    state = model.state_dict()
    converted = {}
    for key, value in dense.state_dict().items():
        match = _DENSE_FFN_KEY.match(key)
        if match and int(match.group(1)) in moe_layers and config.moe_type == "upcycled":
            layer, module, kind = match.groups()
            for expert in range(config.num_experts):
                converted[f"encoder.layer.{layer}.moe.experts.{expert}.{_EXPERT_PROJECTION[module]}.{kind}"] = value
        else:
            converted[key] = value
    unexpected = sorted(set(converted) - set(state))
    if unexpected:
        raise MoEConversionError(f"{model_name_or_path}: weights with no place in the MoE model: {unexpected[:8]}")
    new = sorted(key for key in set(state) - set(converted) if ".moe." not in key)
    if new:
        raise MoEConversionError(f"{model_name_or_path}: checkpoint lacks weights {new[:8]}")
    state.update({key: value.clone() for key, value in converted.items()})
    model.load_state_dict(state, strict=True)
    model.config.name_or_path = model_name_or_path
    return model.to(dense.dtype)
