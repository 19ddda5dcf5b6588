"""The value of a loss term with nothing to compute in a batch: 0, still joined to the graph of its inputs."""

from __future__ import annotations

import torch
from torch import Tensor


def zero_loss(*inputs: Tensor) -> Tensor:
    """A float32 scalar 0 that depends on every tensor of ``inputs`` (``0 · Σ x``), so that backward reaches them.

    A batch can hold no pair to rank or no anchor with a positive; the term is then 0, but the step's graph must
    still reach the encoder: DDP waits for a gradient of every parameter on every process, and a process whose loss
    lost the graph would leave the others waiting.
    """
    return sum((0.0 * tensor.sum() for tensor in inputs), inputs[0].new_zeros((), dtype=torch.float32))
