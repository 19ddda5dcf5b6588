"""The encoder to train: a checkpoint as is, or converted to an MoE encoder, with its own tokenizer."""

from __future__ import annotations

import logging

from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ese_trainer.config.parsing import ConfigError
from ese_trainer.hub_models import resolve_model_path
from ese_trainer.modeling.arguments import ModelArguments, MoEArguments
from ese_trainer.modeling.convert import MoEConversionError, build_moe, is_moe_model
from ese_trainer.modeling.fast_dropout import use_fast_dropout
from ese_trainer.modeling.fused_qkv import fuse_qkv

logger = logging.getLogger(__name__)


def load_tokenizer_and_encoder(model_args: ModelArguments, moe_args: MoEArguments
                               ) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """The model's own tokenizer and the encoder to train: the checkpoint, or its MoE conversion (``moe.enabled``).

    The checkpoint's pooler (unused: embeddings come from our pooling) is frozen, so DDP never waits for its
    gradients. BERT self-attention computes queries, keys and values with one projection (:func:`fuse_qkv`).
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
    fuse_qkv(model)
    if model_args.attention_dropout is not None:
        set_attention_dropout(model, model_args.attention_dropout)
    if model_args.fast_dropout:
        replaced = use_fast_dropout(model)
        logger.info("fast dropout: %d dropout modules draw their CPU masks 4 elements per draw", replaced)
    if model_args.compile_layers:
        compile_layers(model)
    return tokenizer, model


def set_attention_dropout(model: PreTrainedModel, probability: float) -> None:
    """Dropout ``probability`` on the attention probabilities of every self-attention module (BERT's
    ``attention.self``, whose ``dropout.p`` the attention function receives while training) and in the config that
    is saved with the model."""
    modules = [module for name, module in model.named_modules() if name.endswith("attention.self")]
    if not modules:
        raise ConfigError(f"attention_dropout: {type(model).__name__} has no BERT self-attention modules")
    for module in modules:
        module.dropout.p = probability
    model.config.attention_probs_dropout_prob = probability


def compile_layers(model: PreTrainedModel) -> None:
    """``torch.compile`` each transformer layer in place (``dynamic=True``: the token count changes every batch),
    leaving the embeddings, :func:`~ese_trainer.modeling.packing.pack` (data-dependent shapes) and pooling eager.
    Parameter names and the saved weights do not change."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if layers is None:
        raise ConfigError(f"compile_layers: {type(model).__name__} has no encoder.layer list to compile")
    for layer in layers:
        layer.compile(dynamic=True)
