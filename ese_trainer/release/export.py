"""Saving a trained encoder as a sentence-transformers folder."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules.dense import Dense
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

import ese_trainer.modeling  # noqa: F401  (registers the MoE encoder with AutoConfig/AutoModel for ST's loader)
from ese_trainer.hub_models import resolve_model_path
from ese_trainer.modeling.pooling import ST_POOLING_MODES, check_pooling
from ese_trainer.modeling.slicing import check_dims, check_layers, truncate_layers

_LEGACY_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                        "pooling_mode_max_tokens": "max", "pooling_mode_lasttoken": "last"}


def pooling_modules(pooling: str, dimension: int) -> list[nn.Module]:
    """sentence-transformers modules computing our ``pooling`` exactly, from ST's own module classes.

    ``cls_avg`` = ``(cls + mean) / 2`` is ST's ``Pooling(("cls", "mean"))`` (the two concatenated) followed
    by a fixed linear map ``[I/2 | I/2]`` (``Dense``, no bias, identity activation), so the folder loads with
    plain ``SentenceTransformer(path)``, no remote code.
    """
    if pooling != "cls_avg":
        return [Pooling(dimension, ST_POOLING_MODES[pooling])]
    halves = torch.eye(dimension) / 2
    average = Dense(2 * dimension, dimension, bias=False, activation_function=nn.Identity(),
                    init_weight=torch.cat([halves, halves], dim=1))
    return [Pooling(dimension, ("cls", "mean")), average]


def save_sentence_transformer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | Path,
    pooling: str,
    max_seq_length: int,
    truncate_dim: int | None = None,
) -> SentenceTransformer:
    """Write ``model`` + ``tokenizer`` + the training pooling as an ST folder; returns the loaded ST model.

    The folder loads with ``SentenceTransformer(output_dir)`` and embeds exactly as training did (cut to the
    first ``truncate_dim`` dims when given).
    """
    check_pooling(pooling)
    model.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    return add_sentence_transformer_files(output_dir, pooling, max_seq_length, truncate_dim)


def add_sentence_transformer_files(
    output_dir: str | Path, pooling: str, max_seq_length: int, truncate_dim: int | None = None
) -> SentenceTransformer:
    """Turn a folder holding a saved HF model and tokenizer into an ST folder with our ``pooling``.

    ``truncate_dim`` is stored in ``config_sentence_transformers.json``, which ``SentenceTransformer(path)``
    reads back: its ``encode`` then keeps the first ``truncate_dim`` dims of each embedding.
    """
    check_pooling(pooling)
    output_dir = str(output_dir)
    transformer = Transformer(output_dir, max_seq_length=max_seq_length)
    dimension = transformer.model.config.hidden_size
    if truncate_dim is not None and not 1 <= truncate_dim <= dimension:
        raise ValueError(f"truncate_dim {truncate_dim} is outside 1..{dimension} (the model's hidden size)")
    sentence_transformer = SentenceTransformer(modules=[transformer, *pooling_modules(pooling, dimension)],
                                               device="cpu", truncate_dim=truncate_dim)
    sentence_transformer.save(output_dir)
    return sentence_transformer


def export_slice(
    model_dir_or_model: str | Path | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    output_dir: str | Path,
    pooling: str,
    layer: int,
    dim: int,
    max_seq_length: int = 128,
) -> SentenceTransformer:
    """Save the ``(layer, dim)`` cell of the layer x dim grid as an ST folder; returns the loaded ST model.

    The saved transformer holds only the first ``layer`` layers (``config.num_hidden_layers = layer``) and the
    folder stores ``truncate_dim = dim``, so ``SentenceTransformer(output_dir).encode`` gives
    ``pool(hidden_states[layer])[:, :dim]`` of the full model. A model object is copied, never modified; from a
    folder (or Hub id) the model loads with ``trust_remote_code=True`` and ``tokenizer=None`` loads its tokenizer.
    """
    check_pooling(pooling)
    if isinstance(model_dir_or_model, (str, Path)):
        model_path = resolve_model_path(str(model_dir_or_model))
        model = AutoModel.from_pretrained(model_path, trust_remote_code=True)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_path)
    else:
        model = copy.deepcopy(model_dir_or_model)
        if tokenizer is None:
            raise ValueError("export_slice: a tokenizer is needed with a model object")
    [layer] = check_layers([layer], model.config.num_hidden_layers)
    [dim] = check_dims([dim], model.config.hidden_size)
    truncate_layers(model, layer)
    return save_sentence_transformer(model, tokenizer, output_dir, pooling, max_seq_length, truncate_dim=dim)


def saved_pooling(model_dir: str | Path) -> str | None:
    """The pooling an ST folder was saved with (ours or ST's), or None when it is not an ST folder."""
    modules_file = Path(model_dir) / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text())
    for index, module in enumerate(modules):
        if module.get("type", "").endswith("Pooling"):
            config = json.loads((Path(model_dir) / module["path"] / "config.json").read_text())
            followed_by_dense = index + 1 < len(modules) and modules[index + 1].get("type", "").endswith("Dense")
            if config.get("pooling_mode") == ["cls", "mean"] and followed_by_dense:
                return "cls_avg"
            if "pooling_mode" in config:
                reverse = {st_mode: ours for ours, st_mode in ST_POOLING_MODES.items()}
                return reverse.get(config["pooling_mode"])
            # sentence-transformers < 5.4 writes one boolean per mode
            enabled = [mode for key, mode in _LEGACY_POOLING_KEYS.items() if config.get(key)]
            return enabled[0] if len(enabled) == 1 else None
    return None
