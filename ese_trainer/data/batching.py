"""Batches for several training sources: each batch from one source, hard negatives kept together.

In-batch negatives compare like with like only when a batch holds one source (sentence-transformers'
multi-dataset batch samplers do the same). With ``keep_groups`` the pairs of a group (an NLI premise's entailment,
neutral and contradiction hypotheses; a triplet's two pairs) go into the same batch, so that the contradiction
hypothesis is a hard negative of its premise in the in-batch term (SimCSE's supervised setting, Gao et al. 2021).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler

SAMPLING_STRATEGIES = ("proportional", "round_robin")


class _Epoch:
    """The epoch the batch order is drawn for (accelerate's data loaders call ``sampler.set_epoch``)."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class SourceBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` row indices, each batch from one source, in a seeded order.

    Per epoch a source contributes ``round(weight · rows)`` rows (whole shuffled passes over its rows, the last one
    cut short: weight 2 = every row twice, 0.5 = half of them), cut into batches; an incomplete last batch is
    dropped. ``proportional``: all batches of all sources in random order, so each source's share of the steps is
    its share of the rows; ``round_robin``: one batch of each source in turn, stopping when a source runs out.

    Args:
        sources: the source index of every row.
        groups: the group id of every row (rows of a group stay adjacent with ``keep_groups``; a group is split
            only at a batch boundary).
        batch_size: rows per batch.
        weights: per source, the rows drawn per epoch as a multiple of its size.
        strategy: ``proportional`` or ``round_robin``.
        keep_groups: keep each group's rows in one batch (hard negatives).
        seed: the order is a function of ``seed`` and the epoch only, the same in every process.
    """

    def __init__(self, sources: Sequence[int], groups: Sequence[int], batch_size: int, weights: Sequence[float],
                 strategy: str = "proportional", keep_groups: bool = False, seed: int = 0) -> None:
        if strategy not in SAMPLING_STRATEGIES:
            raise ValueError(f"sampling strategy must be one of {SAMPLING_STRATEGIES}, got {strategy!r}")
        if len(sources) != len(groups):
            raise ValueError(f"{len(sources)} source ids but {len(groups)} group ids")
        self.batch_size, self.strategy, self.keep_groups, self.seed = batch_size, strategy, keep_groups, seed
        self.sampler = _Epoch()
        self.rows_by_source: list[list[int]] = [[] for _ in weights]
        for row, source in enumerate(sources):
            self.rows_by_source[source].append(row)
        self.groups, self.weights = list(groups), list(weights)
        self.rows_per_epoch = [round(weight * len(rows)) for weight, rows in zip(self.weights, self.rows_by_source)]
        empty = [index for index, count in enumerate(self.rows_per_epoch) if count < batch_size]
        if empty:
            raise ValueError(f"source(s) {empty} give fewer than one batch of {batch_size} rows per epoch")

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def _order(self, rows: list[int], rng: random.Random) -> list[int]:
        """One shuffled pass over ``rows``: by whole groups (in shuffled group order) with ``keep_groups``."""
        if not self.keep_groups:
            return rng.sample(rows, len(rows))
        members: dict[int, list[int]] = {}
        for row in rows:
            members.setdefault(self.groups[row], []).append(row)
        order = list(members.values())
        rng.shuffle(order)
        return [row for group in order for row in group]

    def source_batches(self, source: int, rng: random.Random) -> list[list[int]]:
        """The batches of one source for one epoch."""
        rows, wanted = self.rows_by_source[source], self.rows_per_epoch[source]
        drawn: list[int] = []
        while len(drawn) < wanted:
            drawn += self._order(rows, rng)
        drawn = drawn[:wanted]
        return [drawn[start:start + self.batch_size] for start in range(0, wanted - self.batch_size + 1,
                                                                         self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.sampler.epoch)
        per_source = [self.source_batches(source, rng) for source in range(len(self.weights))]
        if self.strategy == "proportional":
            batches = [batch for batches in per_source for batch in batches]
            rng.shuffle(batches)
        else:
            rounds = min(len(batches) for batches in per_source)
            batches = [per_source[source][index] for index in range(rounds) for source in range(len(per_source))]
        return iter(batches)

    def __len__(self) -> int:
        counts = [count // self.batch_size for count in self.rows_per_epoch]
        return sum(counts) if self.strategy == "proportional" else len(counts) * min(counts)

    def batches_per_source(self) -> list[int]:
        """Batches each source contributes per epoch."""
        counts = [count // self.batch_size for count in self.rows_per_epoch]
        return counts if self.strategy == "proportional" else [min(counts)] * len(counts)
