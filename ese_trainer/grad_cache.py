"""Gradient caching for contrastive batches larger than memory (GradCache, Gao et al., 2021, arXiv 2101.06983).

A batch of B pairs is embedded in mini-batches without a graph; the loss over all B pairs and its gradient
with respect to the embeddings are computed once; each mini-batch is then re-embedded with a graph and
back-propagated with its slice of those gradients: ``∂L/∂θ = Σ_m (∂L/∂e_m)ᵀ ∂e_m/∂θ``. The result equals
back-propagating through the full batch at once, with the memory of one mini-batch. Dropout is replayed
exactly by restoring the random state each mini-batch had in the first pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch.utils.checkpoint import get_device_states, set_device_states


class RandomState:
    """The CPU and accelerator random states at capture time, restorable as a context."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.cpu_state = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*tensors)

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu_state)
            set_device_states(self.devices, self.device_states)
            yield


def pair_minibatches(inputs: dict[str, torch.Tensor], num_pairs: int, minibatch_size: int
                     ) -> list[dict[str, torch.Tensor]]:
    """Split a 2B-row pair batch (rows i and B+i are pair i) into mini-batches of pairs.

    Each mini-batch keeps the 2b-row layout and is trimmed to the columns its texts use (left or right
    padding).
    """
    minibatches = []
    for start in range(0, num_pairs, minibatch_size):
        pairs = torch.arange(start, min(start + minibatch_size, num_pairs), device=inputs["input_ids"].device)
        rows = torch.cat([pairs, pairs + num_pairs])
        used = torch.nonzero(inputs["attention_mask"][rows].any(dim=0)).flatten()
        columns = slice(int(used[0]), int(used[-1]) + 1)
        minibatches.append({key: value[rows, columns] for key, value in inputs.items()})
    return minibatches


def cached_backward(
    embed: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]],
    loss_of_embeddings: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    minibatches: list[dict[str, torch.Tensor]],
    backward: Callable[[torch.Tensor], None],
    no_sync: Callable[[], contextlib.AbstractContextManager],
) -> torch.Tensor:
    """Run GradCache's three passes; returns the (detached) loss over the whole batch.

    ``embed`` maps a mini-batch to its two sides' embeddings; ``loss_of_embeddings`` maps the full batch's
    embeddings to the loss; ``backward`` back-propagates a surrogate scalar (e.g. ``accelerator.backward``
    with the accumulation scaling); ``no_sync`` suppresses DDP's gradient all-reduce for all but the last
    mini-batch.
    """
    states, sides_a, sides_b = [], [], []
    with torch.no_grad():
        for minibatch in minibatches:
            states.append(RandomState(*minibatch.values()))
            emb_a, emb_b = embed(minibatch)
            sides_a.append(emb_a)
            sides_b.append(emb_b)
    emb_a = torch.cat(sides_a).detach().requires_grad_()
    emb_b = torch.cat(sides_b).detach().requires_grad_()
    loss = loss_of_embeddings(emb_a, emb_b)
    grad_a, grad_b = torch.autograd.grad(loss, [emb_a, emb_b])
    offset = 0
    for index, (minibatch, state) in enumerate(zip(minibatches, states)):
        size = minibatch["input_ids"].shape[0] // 2
        last = index == len(minibatches) - 1
        with state.restored(), (contextlib.nullcontext() if last else no_sync()):
            mini_a, mini_b = embed(minibatch)
            surrogate = (mini_a * grad_a[offset:offset + size]).sum() + (mini_b * grad_b[offset:offset + size]).sum()
            backward(surrogate)
        offset += size
    return loss.detach()
