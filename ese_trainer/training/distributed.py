"""Gathering embeddings across processes for losses over the global batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.nn.functional import all_gather as differentiable_all_gather

from ese_trainer.losses import RowBatch


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


def _gather_padded(tensor: Tensor, sizes: list[int], differentiable: bool) -> Tensor:
    """Every process's ``tensor`` (``sizes[r]`` rows on process r) concatenated in rank order: padded to the largest
    size for the all-gather, the padding dropped after."""
    longest = max(sizes)
    padded = torch.cat([tensor, tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))])
    gathered = gather_with_grad(padded) if differentiable else gather_without_grad(padded)
    return torch.cat([gathered[rank * longest:rank * longest + size] for rank, size in enumerate(sizes)])


def gather_rows(batch: RowBatch) -> RowBatch:
    """Every process's rows as one batch in rank order (embeddings differentiably, :func:`gather_with_grad`): all
    anchors first, then all other texts, each other text's row renumbered into the global batch. Processes may hold
    different numbers of texts."""
    if world_size() == 1:
        return batch
    rows, others = batch.num_rows, batch.other_row.shape[0]
    counts = gather_without_grad(torch.tensor([[rows, others]], device=batch.other_row.device)).tolist()
    row_sizes, other_sizes = [count[0] for count in counts], [count[1] for count in counts]
    offset = sum(row_sizes[:dist.get_rank()])

    def both(tensor: Tensor | None, differentiable: bool) -> Tensor | None:
        if tensor is None:
            return None
        return torch.cat([_gather_padded(tensor[:rows], row_sizes, differentiable),
                          _gather_padded(tensor[rows:], other_sizes, differentiable)])

    return RowBatch(
        embeddings=both(batch.embeddings, differentiable=True),
        other_row=_gather_padded(batch.other_row + offset, other_sizes, differentiable=False),
        other_role=_gather_padded(batch.other_role, other_sizes, differentiable=False),
        other_score=_gather_padded(batch.other_score, other_sizes, differentiable=False),
        text_ids=both(batch.text_ids, differentiable=False),
        guide=both(batch.guide, differentiable=False),
        source=batch.source,  # every process's batch of a step comes from the same source
    )
