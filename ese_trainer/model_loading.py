"""The encoder to train (a checkpoint as is, or converted to an MoE encoder) and the objective that trains it."""

from __future__ import annotations

import logging

from transformers import AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from ese_trainer.arguments import ESEArguments, LossArguments, ModelArguments, MoEArguments
from ese_trainer.config import ConfigError
from ese_trainer.ese import ESELoss
from ese_trainer.hub_models import resolve_model_path
from ese_trainer.losses import PairLoss, RouterLoss
from ese_trainer.modeling import MOE_MODEL_TYPE, MoEConversionError, build_moe, is_moe_model
from ese_trainer.objective import EmbeddingObjective

logger = logging.getLogger(__name__)

# Parameter-name patterns (searched in the names of the trained module) of the parts that train at a rate of their own.
ROUTER_PARAMETERS = r"\.moe\.router\."
ESE_HEAD_PARAMETERS = r"^objective\.ese_loss\.heads\."


def load_tokenizer_and_encoder(model_args: ModelArguments, moe_args: MoEArguments
                               ) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """The model's own tokenizer and the encoder to train: the checkpoint, or its MoE conversion (``moe.enabled``).

    The checkpoint's pooler (unused: embeddings come from our pooling) is frozen, so DDP never waits for its
    gradients.
    """
    model_path = resolve_model_path(model_args.model_name_or_path)
    logger.info("model %s -> %s", model_args.model_name_or_path, model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if not moe_args.moe_enabled:
        model = AutoModel.from_pretrained(model_path)
    elif is_moe_model(model_path):
        raise ConfigError(f"{model_path} is already an MoE model: train it without the moe section")
    else:
        try:
            model = build_moe(model_path, **moe_args.moe_settings())
        except MoEConversionError as error:
            raise ConfigError(str(error)) from None
    if getattr(model, "pooler", None) is not None:
        model.pooler.requires_grad_(False)
    return tokenizer, model


def build_objective(loss_args: LossArguments, ese_args: ESEArguments, config: PretrainedConfig) -> EmbeddingObjective:
    """The pair loss, plus the router terms of an MoE encoder and the ESE terms when enabled."""
    pair_loss = PairLoss(loss_args.weights(), loss_args.scales(), loss_args.ibn_positive_threshold,
                         loss_args.gather_across_devices)
    router_loss = None
    if config.model_type == MOE_MODEL_TYPE:
        router_loss = RouterLoss(config.num_experts_per_tok, config.router_aux_loss_coef, config.router_z_loss_coef)
    ese_loss = None
    if ese_args.ese_enabled:
        try:
            ese_loss = ESELoss(ese_args.settings(), config.num_hidden_layers, config.hidden_size)
        except ValueError as error:
            raise ConfigError(f"ese.{error}") from None
    return EmbeddingObjective(pair_loss, router_loss, ese_loss)


def learning_rates(moe_args: MoEArguments, ese_args: ESEArguments) -> dict[str, float]:
    """Own learning rates of the newly initialised parts: the MoE routers, ESE's learned target heads."""
    rates = {}
    if moe_args.moe_router_learning_rate is not None:
        rates[ROUTER_PARAMETERS] = moe_args.moe_router_learning_rate
    if ese_args.ese_enabled and ese_args.ese_compression_target == "moe":
        rates[ESE_HEAD_PARAMETERS] = ese_args.ese_head_learning_rate
    return rates
