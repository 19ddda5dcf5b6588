"""Batches of grouped rows: each optimizer step from one source, no text twice in a step's batches.

In-batch negatives compare like with like only when a batch holds one source (sentence-transformers'
multi-dataset batch samplers do the same), and a text that appears in two rows of a batch would be a false
negative of itself (its no-duplicates batch sampler's rule; the loss masks duplicates too). With several processes
the rule holds for the global batch: the ``processes`` consecutive batches of one step, which accelerate hands one
to each process, come from the same source and share no text, so negatives gathered across processes stay
within one source too.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

SOURCE_SAMPLING_STRATEGIES = ("proportional", "round_robin")  # how the sources' steps are ordered in an epoch


class EpochSteps(NamedTuple):
    """An epoch's steps (each a list of ``processes x batch_size`` row indices) and how many of them are relaxed:
    had to take a row sharing a text with another row of the step."""

    steps: list[list[int]]
    relaxed: int


class _Epoch:
    """The epoch the batch order is drawn for (accelerate's data loaders call ``sampler.set_epoch``)."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def no_duplicate_batches(order: Sequence[int], row_texts: Sequence[Sequence[int]], size: int,
                         count: int) -> tuple[list[list[int]], int]:
    """``count`` batches of ``size`` rows from ``order``, in order, a row joining a batch only when none of its texts
    is in it yet (a skipped row waits for the next batch). Returns the batches and how many of them had to take a
    row that shares a text (only when the rows left cannot fill a batch otherwise; the loss masks such a duplicate).
    """
    remaining, batches, relaxed = list(order), [], 0
    for _ in range(count):
        batch, seen, skipped = [], set(), []
        for position, row in enumerate(remaining):
            if len(batch) == size:
                skipped.extend(remaining[position:])
                break
            if seen.isdisjoint(row_texts[row]):
                batch.append(row)
                seen.update(row_texts[row])
            else:
                skipped.append(row)
        if len(batch) < size:  # every row left was scanned: fill up with the first ones skipped
            relaxed += 1
            missing = size - len(batch)
            batch, skipped = batch + skipped[:missing], skipped[missing:]
        batches.append(batch)
        remaining = skipped
    return batches, relaxed


class SourceBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` row indices, each optimizer step's ``processes`` batches from one source and sharing
    no text (:func:`no_duplicate_batches` over the step's ``processes x batch_size`` rows), in a seeded order.

    Per epoch a source contributes ``round(weight · rows)`` rows (whole shuffled passes over its rows, the last one
    cut short: weight 2 = every row twice, 0.5 = half of them), cut into steps; the rows left over that fill no step
    are dropped. ``proportional``: all steps of all sources in random order, so each source's share of the steps is
    its share of the rows; ``round_robin``: one step of each source in turn, stopping when a source runs out.

    Args:
        sources: the source index of every row.
        row_texts: the texts of every row, as ids (equal texts, equal ids).
        batch_size: rows per batch (per process).
        weights: per source, the rows drawn per epoch as a multiple of its size.
        strategy: ``proportional`` or ``round_robin``.
        seed: the order is a function of ``seed`` and the epoch only, the same in every process.
        processes: batches per optimizer step (the number of processes; accelerate gives each its own).
    """

    def __init__(self, sources: Sequence[int], row_texts: Sequence[Sequence[int]], batch_size: int,
                 weights: Sequence[float], strategy: str = "proportional", seed: int = 0, processes: int = 1) -> None:
        if strategy not in SOURCE_SAMPLING_STRATEGIES:
            raise ValueError(f"sampling strategy must be one of {SOURCE_SAMPLING_STRATEGIES}, got {strategy!r}")
        if len(sources) != len(row_texts):
            raise ValueError(f"{len(sources)} source ids but {len(row_texts)} rows of text ids")
        self.batch_size, self.strategy, self.seed, self.processes = batch_size, strategy, seed, processes
        self.sampler = _Epoch()
        self.rows_by_source: list[list[int]] = [[] for _ in weights]
        for row, source in enumerate(sources):
            self.rows_by_source[source].append(row)
        self.row_texts, self.weights = [tuple(texts) for texts in row_texts], list(weights)
        self.rows_per_epoch = [round(weight * len(rows)) for weight, rows in zip(self.weights, self.rows_by_source)]
        empty = [index for index, count in enumerate(self.rows_per_epoch) if count < self.step_rows]
        if empty:
            raise ValueError(f"source(s) {empty} give fewer than one step of {self.step_rows} rows per epoch "
                             f"({processes} process(es) x batch {batch_size})")
        self.relaxed_batches = 0  # in the epoch drawn last by __iter__
        self._drawn: tuple[int, EpochSteps] | None = None  # the last epoch drawn, and its steps

    @property
    def step_rows(self) -> int:
        return self.batch_size * self.processes

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def draw_source_steps(self, source: int, rng: random.Random) -> tuple[list[list[int]], int]:
        """The steps (global batches of ``processes x batch_size`` rows) of one source for one epoch, drawn from
        ``rng``, and how many of them had to take a row that shares a text (:func:`no_duplicate_batches`)."""
        rows, wanted = self.rows_by_source[source], self.rows_per_epoch[source]
        drawn: list[int] = []
        while len(drawn) < wanted:
            drawn += rng.sample(rows, len(rows))
        return no_duplicate_batches(drawn[:wanted], self.row_texts, self.step_rows, wanted // self.step_rows)

    def epoch_steps(self, epoch: int) -> EpochSteps:
        """Every step of ``epoch`` in order, and how many had to take a row sharing a text: a function of the seed
        and the epoch only (the epoch drawn last is kept, so asking before iterating costs one draw)."""
        if self._drawn is not None and self._drawn[0] == epoch:
            return self._drawn[1]
        rng = random.Random(self.seed * 1_000_003 + epoch)
        per_source, relaxed = [], 0
        for source in range(len(self.weights)):
            steps, source_relaxed = self.draw_source_steps(source, rng)
            per_source.append(steps)
            relaxed += source_relaxed
        if self.strategy == "proportional":
            steps = [step for steps in per_source for step in steps]
            rng.shuffle(steps)
        else:
            rounds = min(len(steps) for steps in per_source)
            steps = [per_source[source][index] for index in range(rounds) for source in range(len(per_source))]
        self._drawn = (epoch, EpochSteps(steps, relaxed))
        return self._drawn[1]

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.sampler.epoch
        steps, self.relaxed_batches = self.epoch_steps(epoch)
        logger.info("epoch %d: %d steps, %d of them relaxed (relaxed_batches: a row sharing a text with another "
                    "row of its step, taken because the rows left could not fill it otherwise; the loss masks the "
                    "duplicate)", epoch, len(steps), self.relaxed_batches)
        for step in steps:
            for start in range(0, self.step_rows, self.batch_size):
                yield step[start:start + self.batch_size]

    def __len__(self) -> int:
        return sum(self.steps_per_source()) * self.processes

    def steps_per_source(self) -> list[int]:
        """Optimizer steps each source contributes per epoch."""
        counts = [count // self.step_rows for count in self.rows_per_epoch]
        return counts if self.strategy == "proportional" else [min(counts)] * len(counts)
