"""The objective that trains an encoder (the combined loss, router terms of an MoE encoder, ESE terms), its guide
model, and the learning rates of the parts that train at a rate of their own."""

from __future__ import annotations

from transformers import PretrainedConfig

from ese_trainer.config.parsing import ConfigError
from ese_trainer.ese import ESELoss
from ese_trainer.ese.arguments import ESEArguments
from ese_trainer.hub_models import resolve_model_path
from ese_trainer.losses import CombinedLoss, RouterLoss
from ese_trainer.losses.arguments import GUIDE_START, LossArguments
from ese_trainer.modeling import MOE_MODEL_TYPE
from ese_trainer.modeling.arguments import MoEArguments
from ese_trainer.training.guide import GuideEmbeddings
from ese_trainer.training.objective import EmbeddingObjective

# Parameter-name patterns (searched in the names of the trained module) of the parts that train at a rate of their own.
ROUTER_PARAMETERS = r"\.moe\.router\."
ESE_HEAD_PARAMETERS = r"^objective\.ese_loss\.heads\."


def build_objective(loss_args: LossArguments, ese_args: ESEArguments, config: PretrainedConfig) -> EmbeddingObjective:
    """The combined loss, plus the router terms of an MoE encoder and the ESE terms when enabled."""
    loss = CombinedLoss(loss_args.weights(), loss_args.settings())
    router_loss = None
    if config.model_type == MOE_MODEL_TYPE:
        router_loss = RouterLoss(config.num_experts_per_tok, config.router_aux_loss_coef, config.router_z_loss_coef)
    ese_loss = None
    if ese_args.ese_enabled:
        try:
            ese_loss = ESELoss(ese_args.settings(), config.num_hidden_layers, config.hidden_size)
        except ValueError as error:
            raise ConfigError(f"ese.{error}") from None
    return EmbeddingObjective(loss, router_loss, ese_loss, loss_args.gather_across_devices)


def learning_rates(moe_args: MoEArguments, ese_args: ESEArguments) -> dict[str, float]:
    """Own learning rates of the newly initialised parts: the MoE routers, ESE's learned target heads."""
    rates = {}
    if moe_args.moe_router_learning_rate is not None:
        rates[ROUTER_PARAMETERS] = moe_args.moe_router_learning_rate
    if ese_args.ese_enabled and ese_args.ese_compression_target == "moe":
        rates[ESE_HEAD_PARAMETERS] = ese_args.ese_head_learning_rate
    return rates


def guide_embeddings(loss_args: LossArguments, model_name_or_path: str, texts: list[str], pooling: str,
                     max_seq_length: int, batch_size: int) -> GuideEmbeddings | None:
    """The guide model's embeddings of ``texts`` (the run's training and dev texts), or None without a guide:
    ``guide_model: start`` is the model training starts from."""
    if loss_args.guide_model is None:
        return None
    name = model_name_or_path if loss_args.guide_model == GUIDE_START else loss_args.guide_model
    return GuideEmbeddings.encode(resolve_model_path(name), texts, pooling, max_seq_length, batch_size)
