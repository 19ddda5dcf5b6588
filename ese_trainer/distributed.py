"""Gathering embeddings across processes for losses over the global batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather as differentiable_all_gather


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` concatenated in rank order, differentiable.

    ``torch.distributed.nn.functional.all_gather`` sums, in backward, the gradients every process computes
    for each slice. When each process evaluates the same loss L over the gathered batch, process r's
    embeddings thus receive ``W · ∂L/∂e_r``, and DDP's gradient averaging (÷W) leaves exactly the gradient
    of one process holding the whole global batch.
    """
    if world_size() == 1:
        return tensor
    return torch.cat(differentiable_all_gather(tensor.contiguous()), dim=0)


def gather_without_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` concatenated in rank order (no gradient), e.g. the pairs' scores."""
    if world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)
