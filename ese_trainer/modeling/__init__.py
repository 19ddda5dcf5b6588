"""Modeling: the encoder (loading, MoE conversion), its packed forward, pooling and layer slicing."""

# Importing this package registers the MoE encoder with AutoConfig/AutoModel in-process; saved MoE models also
# carry its code (register_for_auto_class) for trust_remote_code=True loading elsewhere.

from transformers import AutoConfig, AutoModel

from ese_trainer.modeling.configuration_moe_bert import MOE_MODEL_TYPE, MOE_TYPES, MoEBertConfig
from ese_trainer.modeling.convert import MoEConversionError, build_moe, is_moe_model
from ese_trainer.modeling.modeling_moe_bert import (
    MoEBertModel,
    MoEBertModelOutput,
    MoELoadingError,
    load_balancing_loss,
    router_z_loss,
)

AutoConfig.register(MOE_MODEL_TYPE, MoEBertConfig, exist_ok=True)
AutoModel.register(MoEBertConfig, MoEBertModel, exist_ok=True)

__all__ = [
    "MOE_MODEL_TYPE", "MOE_TYPES", "MoEBertConfig", "MoEBertModel", "MoEBertModelOutput", "MoEConversionError",
    "MoELoadingError", "build_moe", "is_moe_model", "load_balancing_loss", "router_z_loss",
]
