"""The objective that trains an encoder (the combined loss, router terms of an MoE encoder, ESE terms), its guide
model, and the learning rates of the parts that train at a rate of their own."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PretrainedConfig

from ese_trainer.config.parsing import ConfigError
from ese_trainer.ese import ESELoss
from ese_trainer.ese.arguments import ESEArguments
from ese_trainer.hub_models import resolve_model_path
from ese_trainer.losses import LOSS_TERMS, CombinedLoss, RouterLoss
from ese_trainer.losses.arguments import GUIDE_START, LossArguments
from ese_trainer.modeling import MOE_MODEL_TYPE
from ese_trainer.modeling.arguments import MoEArguments
from ese_trainer.training.guide import GuideEmbeddings
from ese_trainer.training.objective import EmbeddingObjective

# Parameter-name patterns (searched in the names of the trained module) of the parts that train at a rate of their own.
ROUTER_PARAMETERS = r"\.moe\.router\."
ESE_HEAD_PARAMETERS = r"^objective\.ese_loss\.heads\."


def build_objective(loss_args: LossArguments, ese_args: ESEArguments, config: PretrainedConfig,
                    source_loss_weights: Sequence[dict | None] = ()) -> EmbeddingObjective:
    """The combined loss (with ``source_loss_weights``: each training source's ``loss_weights``, by index), plus the
    router terms of an MoE encoder and the ESE terms when enabled."""
    weights = loss_args.weights()
    loss = CombinedLoss(weights, loss_args.settings(), source_term_weights(source_loss_weights, weights))
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


def source_term_weights(source_loss_weights: Sequence[dict | None],
                        run_weights: dict[str, float]) -> list[dict[str, float] | None]:
    """``train_datasets[i].loss_weights`` (``{cosent_w: 1, ibn_w: 0}``) as term weights (``{cosent: 1, ibn: 0}``);
    an unknown term, or a source whose weights (its own over the run's) are all 0, is a ConfigError naming the
    entry."""
    valid = [f"{term.key}_w" for term in LOSS_TERMS]
    by_source = []
    for index, own in enumerate(source_loss_weights):
        where = f"train_datasets[{index}].loss_weights"
        unknown = sorted(set(own or {}) - set(valid))
        if unknown:
            raise ConfigError(f"{where}: unknown {unknown}; valid keys: {valid}")
        weights = None if own is None else {key.removesuffix("_w"): float(value) for key, value in own.items()}
        if weights is not None and not any({**run_weights, **weights}.values()):
            raise ConfigError(f"{where}: every term's weight is 0 for this source: its steps would train nothing")
        by_source.append(weights)
    return by_source


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
