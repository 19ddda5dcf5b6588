"""The ``loss`` arguments: weights and scales of the pair-loss terms, the contrastive batch."""

from __future__ import annotations

from dataclasses import dataclass, field

from ese_trainer.losses.pair_loss import PAIR_TERMS


@dataclass
class LossArguments:
    """Weights and scales of ``cosent_w·CoSENT + ibn_w·InfoNCE + angle_w·AnglE`` (the terms of
    :data:`ese_trainer.losses.PAIR_TERMS`), and how large the contrastive batch is."""

    _argument_group_name = "loss"

    cosent_w: float = field(default=1.0, metadata={"help": "Weight of the CoSENT term (a ranking of cosines)."})
    ibn_w: float = field(default=1.0, metadata={"help": "Weight of the in-batch-negative term."})
    angle_w: float = field(default=1.0, metadata={"help": "Weight of the AnglE term."})
    cosent_scale: float = field(default=20.0, metadata={"help": "Inverse temperature of the CoSENT term."})
    ibn_scale: float = field(default=20.0, metadata={"help": "Inverse temperature of the in-batch-negative term."})
    angle_scale: float = field(default=20.0, metadata={"help": "Inverse temperature of the AnglE term."})
    ibn_positive_threshold: float = field(
        default=1.0, metadata={"help": "Pairs with score >= this are ibn positives; the rest serve as negatives."}
    )
    gather_across_devices: bool = field(
        default=False,
        metadata={"help": "Compute every term over the global batch: embeddings all-gathered (differentiably) "
                  "from all processes, so each process's negatives include every other process's texts."},
    )
    ibn_cache: bool = field(
        default=False,
        metadata={"help": "GradCache: embed the per-device batch in mini-batches of cache_minibatch_size pairs "
                  "without a graph, so the contrastive batch can grow beyond what fits in memory."},
    )
    cache_minibatch_size: int = field(default=32, metadata={"help": "Pairs per mini-batch with ibn_cache."})

    def __post_init__(self) -> None:
        for term in PAIR_TERMS:
            if getattr(self, f"{term.key}_w") < 0:
                raise ValueError(f"{term.key}_w must be >= 0, got {getattr(self, f'{term.key}_w')}")
            if getattr(self, f"{term.key}_scale") <= 0:
                raise ValueError(f"{term.key}_scale must be > 0, got {getattr(self, f'{term.key}_scale')}")
        if not any(getattr(self, f"{term.key}_w") for term in PAIR_TERMS):
            raise ValueError("all loss weights are 0: nothing to train")
        if self.cache_minibatch_size <= 0:
            raise ValueError(f"cache_minibatch_size must be > 0, got {self.cache_minibatch_size}")

    def weights(self) -> dict[str, float]:
        return {term.key: getattr(self, f"{term.key}_w") for term in PAIR_TERMS}

    def scales(self) -> dict[str, float]:
        return {term.key: getattr(self, f"{term.key}_scale") for term in PAIR_TERMS}
