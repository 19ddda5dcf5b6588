"""Gathering embeddings across processes for losses over the global batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather as differentiable_all_gather

from ese_trainer.losses import Pairs


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


def average_gradients(parameters) -> None:
    """Average ``.grad`` of ``parameters`` over all processes (one all-reduce of the flattened gradients).

    For steps whose backward passes ran without DDP's own synchronisation (GradCache's several passes under
    ``no_sync``): afterwards every process holds the gradient DDP would have produced.
    """
    if world_size() == 1:
        return
    grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
    if not grads:
        return
    flat = torch.cat([grad.reshape(-1) for grad in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def gather_pairs(pairs: Pairs) -> Pairs:
    """Every process's pairs in rank order (embeddings differentiably, :func:`gather_with_grad`); the text ids keep
    the layout all first sides, then all second sides."""
    text_ids = pairs.text_ids
    if text_ids is not None:
        half = len(text_ids) // 2
        text_ids = torch.cat([gather_without_grad(text_ids[:half]), gather_without_grad(text_ids[half:])])
    return Pairs(gather_with_grad(pairs.emb_a), gather_with_grad(pairs.emb_b), gather_without_grad(pairs.scores),
                 text_ids)
