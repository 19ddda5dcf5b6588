"""Slices of an encoder: which (transformer layer, leading dims) cells exist, and cutting a model to its first
layers (a leaf module: the grid evaluation and the slice export both use it).

Layers are numbered as in ``hidden_states``: 1 is the first transformer layer; 0, the embedding output, is no
layer of the grid.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def check_layers(layers: Sequence[int | str] | str | None, num_layers: int) -> list[int]:
    """Transformer layers as sorted ints in ``1..num_layers``; ``"all"`` (or ``["all"]``) is every layer.

    ``None`` means the last layer only. Layer 0 (the embedding output) is not a transformer layer and is refused.
    """
    valid = f"transformer layers are numbered 1..{num_layers} (0, the embedding output, is not allowed)"
    if layers is None:
        return [num_layers]
    if isinstance(layers, str):
        layers = [layers]
    if [str(layer).strip().lower() for layer in layers] == ["all"]:
        return list(range(1, num_layers + 1))
    if not layers:
        raise ValueError(f"layers: none given; {valid}, or 'all'")
    checked = []
    for layer in layers:
        try:
            value = layer if isinstance(layer, int) and not isinstance(layer, bool) else int(str(layer).strip())
        except ValueError:
            raise ValueError(f"layers: {layer!r} is not a layer number or 'all'; {valid}") from None
        if not 1 <= value <= num_layers:
            raise ValueError(f"layers: {value} is outside 1..{num_layers}; {valid}")
        if value in checked:
            raise ValueError(f"layers: {value} is given twice")
        checked.append(value)
    return sorted(checked)


def check_dims(dims: Sequence[int] | None, hidden_size: int) -> list[int]:
    """Embedding sizes (leading dims kept), strictly ascending, each in ``1..hidden_size``; None = full size."""
    if dims is None:
        return [hidden_size]
    dims = list(dims)
    if not dims:
        raise ValueError(f"dims: none given; each must be in 1..{hidden_size}")
    for dim in dims:
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= hidden_size:
            raise ValueError(f"dims: {dim!r} is outside 1..{hidden_size} (the model's hidden size)")
    if any(later <= earlier for earlier, later in zip(dims, dims[1:])):
        raise ValueError(f"dims must be strictly ascending, got {dims}")
    return dims


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no encoder.layer ModuleList to truncate")
    return layers


def truncate_layers(model: nn.Module, num_layers: int) -> nn.Module:
    """``model`` cut IN PLACE to its first ``num_layers`` transformer layers (so it only runs those); returned.

    ``config.num_hidden_layers`` follows; a list-valued ``config.moe_layers`` (0-based indices of
    Mixture-of-Experts layers) keeps only the indices that remain. Patterns (``"all"``, ``"every_2"``) are
    positional and stay valid as they are.
    """
    layers = _encoder_layers(model)
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= len(layers):
        raise ValueError(f"cannot truncate to {num_layers!r} layers: the model has layers 1..{len(layers)}")
    model.encoder.layer = layers[:num_layers]
    model.config.num_hidden_layers = num_layers
    moe_layers = getattr(model.config, "moe_layers", None)
    if isinstance(moe_layers, list) and all(isinstance(index, int) for index in moe_layers):
        model.config.moe_layers = [index for index in moe_layers if index < num_layers]
    return model
