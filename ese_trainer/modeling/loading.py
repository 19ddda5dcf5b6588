"""The encoder to train: a checkpoint as is, or converted to an MoE encoder, with its own tokenizer."""

from __future__ import annotations

import logging

from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ese_trainer.config.parsing import ConfigError
from ese_trainer.hub_models import resolve_model_path
from ese_trainer.modeling.arguments import ModelArguments, MoEArguments
from ese_trainer.modeling.convert import MoEConversionError, build_moe, is_moe_model

logger = logging.getLogger(__name__)


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
