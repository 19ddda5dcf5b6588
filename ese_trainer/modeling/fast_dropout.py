"""Dropout whose masks cost a quarter of a random draw per element (CPU).

PyTorch's CPU ``dropout`` draws one value from the Mersenne Twister per element (``bernoulli_``): 15% of a bf16
training step of the recipe on a 2-core Xeon (``bench/results/train_profile_bf16.md``). Here one
64-bit draw gives four 16-bit uniforms: an element is kept where its uniform is at least ``p`` (rounded to
``1/65536``), and the kept values are scaled by ``1 / (1 - p')`` with ``p'`` the rounded rate, so the expectation
is exactly the input's (inverted dropout, Srivastava et al., 2014). The draws come from the default CPU generator:
seeding, checkpointed RNG state and resumption behave as with ``bernoulli_``; the stream of masks is not the same.

:func:`use_fast_dropout` puts :class:`FastDropout` in place of every ``nn.Dropout`` of a model (embeddings, the
attention and feed-forward outputs), and the packed attention (:mod:`ese_trainer.modeling.packing`) masks the
attention probabilities with :func:`keep_mask` when the layer's dropout is a :class:`FastDropout`. On other devices
:class:`FastDropout` is ``nn.Dropout``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEVELS = 1 << 16  # the 16-bit uniforms' resolution


def dropped_levels(probability: float) -> int:
    """``p`` in 16-bit levels: the uniforms below this many of the 65536 are dropped."""
    return round(probability * LEVELS)


def kept_rate(probability: float) -> float:
    """The keep probability actually drawn: ``1 - p`` with ``p`` rounded to ``1 / 65536``."""
    return 1.0 - dropped_levels(probability) / LEVELS


def keep_mask(shape: torch.Size | tuple[int, ...], probability: float) -> Tensor:
    """A boolean CPU mask, each element kept with :func:`kept_rate` ``(p)``, from ``ceil(n / 4)`` 64-bit draws."""
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(1 << 63), (1 << 63) - 1)
    threshold = dropped_levels(probability) - LEVELS // 2  # int16 uniforms: P(u < threshold) = p'
    return words.view(torch.int16)[:count].view(shape) >= threshold


class _MaskedScale(torch.autograd.Function):
    """``where(keep, x * scale, 0)``, saving only the boolean mask for the backward."""

    @staticmethod
    def forward(ctx, inputs: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, inputs * scale, 0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad * ctx.scale, 0), None, None


def fast_dropout(inputs: Tensor, probability: float, training: bool = True) -> Tensor:
    """Inverted dropout with :func:`keep_mask` on CPU tensors; ``F.dropout`` elsewhere, and identity when not
    training or ``p = 0``."""
    if not training or probability == 0.0:
        return inputs
    if inputs.device.type != "cpu":
        return F.dropout(inputs, probability, training=True)
    return _MaskedScale.apply(inputs, keep_mask(inputs.shape, probability), 1.0 / kept_rate(probability))


class FastDropout(nn.Dropout):
    """``nn.Dropout`` drawing its CPU masks with :func:`keep_mask` (same ``p``, same state dict: none)."""

    def forward(self, inputs: Tensor) -> Tensor:
        return fast_dropout(inputs, self.p, self.training)


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every ``nn.Dropout`` of ``model`` by a :class:`FastDropout` of the same ``p``; the number replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace))
                replaced += 1
    return replaced
