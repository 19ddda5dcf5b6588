"""Gradient caching for contrastive batches larger than memory (GradCache, Gao et al., 2021, arXiv 2101.06983).

A batch of N texts (the rows' anchors and other texts) is encoded in mini-batches of texts without a graph;
the objective over the whole batch and its gradient with respect to the encoder's outputs are computed once;
each mini-batch is then re-encoded with a graph and back-propagated with its slice of those gradients:
``∂L/∂θ = Σ_m (∂L/∂o_m)ᵀ ∂o_m/∂θ``. The result equals back-propagating through the full batch at once, with the
memory of one mini-batch. Dropout is replayed exactly by restoring the random state each mini-batch had in the
first pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.checkpoint import get_device_states, set_device_states

from ese_trainer.modeling.encoding import EncodedBatch
from ese_trainer.training.objective import ObjectiveOutput


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


def text_minibatches(inputs: dict[str, torch.Tensor], minibatch_size: int) -> list[dict[str, torch.Tensor]]:
    """Split a batch of N texts (rows of ``input_ids``/``attention_mask``/``token_type_ids``) into consecutive
    mini-batches of at most ``minibatch_size`` texts, each trimmed to the columns its texts use (left or right
    padding). The rows' layout refers to text positions, which the joined outputs keep."""
    minibatches = []
    for start in range(0, inputs["input_ids"].shape[0], minibatch_size):
        rows = slice(start, start + minibatch_size)
        used = torch.nonzero(inputs["attention_mask"][rows].any(dim=0)).flatten()
        columns = slice(int(used[0]), int(used[-1]) + 1)
        minibatches.append({key: value[rows, columns] for key, value in inputs.items()})
    return minibatches


def join_minibatches(parts: list[EncodedBatch]) -> EncodedBatch:
    """The whole batch's :class:`EncodedBatch` from its mini-batches', every tensor a leaf that collects the
    gradient of the loss (router logits: the tokens of all mini-batches, in order)."""

    def leaf(tensors: list[Tensor]) -> Tensor:
        return torch.cat(tensors).detach().requires_grad_()

    router = None
    if parts[0].router_logits is not None:
        router = tuple(leaf(list(layer)) for layer in zip(*(part.router_logits for part in parts)))
    return EncodedBatch(
        embeddings=leaf([part.embeddings for part in parts]),
        layer_embeddings={layer: leaf([part.layer_embeddings[layer] for part in parts])
                          for layer in parts[0].layer_embeddings},
        router_logits=router,
    )


def _surrogate(part: EncodedBatch, whole: EncodedBatch, text_offset: int, token_offsets: list[int]) -> Tensor:
    """``Σ <output, ∂L/∂output>`` over ``part``'s outputs, with the gradients from ``whole`` at ``part``'s rows."""

    def rows(output: Tensor, leaf: Tensor, offset: int) -> Tensor:
        if leaf.grad is None:
            return output.new_zeros(())
        return (output * leaf.grad[offset:offset + output.shape[0]]).sum()

    total = rows(part.embeddings, whole.embeddings, text_offset)
    for layer, output in part.layer_embeddings.items():
        total = total + rows(output, whole.layer_embeddings[layer], text_offset)
    for output, leaf, offset in zip(part.router_logits or (), whole.router_logits or (), token_offsets):
        total = total + rows(output, leaf, offset)
    return total


def cached_step(
    encode: Callable[[dict[str, Tensor]], EncodedBatch],
    objective: Callable[[EncodedBatch], ObjectiveOutput],
    minibatches: list[dict[str, Tensor]],
    backward: Callable[[Tensor], None],
) -> ObjectiveOutput:
    """GradCache's three passes over ``minibatches``; returns the objective's output for the whole batch.

    1. ``encode`` every mini-batch without a graph (its random state kept);
    2. ``objective`` of the joined outputs (:func:`join_minibatches`), ``backward(loss)``: the gradients reach the
       cached outputs and any parameter of the objective itself (ESE's target heads);
    3. re-``encode`` each mini-batch with its random state restored (dropout replayed) and back-propagate
       ``Σ <output, ∂L/∂output>`` (:func:`_surrogate`): the encoder's gradient, summed over mini-batches.

    Every output of the encoder is cached — last-layer and per-layer embeddings and router logits — so every term
    of the objective (combined loss, router, ESE) is covered. ``backward`` applies any loss scaling (gradient
    accumulation, mixed precision); the surrogate's gradients are already scaled, so it is back-propagated as is.
    """
    states, parts = [], []
    with torch.no_grad():
        for minibatch in minibatches:
            states.append(RandomState(*minibatch.values()))
            parts.append(encode(minibatch))
    whole = join_minibatches(parts)
    output = objective(whole)
    backward(output.loss)
    text_offset, token_offsets = 0, [0] * len(whole.router_logits or ())
    for minibatch, state, cached in zip(minibatches, states, parts):
        with state.restored():
            part = encode(minibatch)
        _surrogate(part, whole, text_offset, token_offsets).backward()
        text_offset += cached.embeddings.shape[0]
        token_offsets = [offset + logits.shape[0] for offset, logits in zip(token_offsets, cached.router_logits or ())]
    return output
