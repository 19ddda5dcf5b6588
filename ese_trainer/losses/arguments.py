"""The ``loss`` arguments: the combined loss's weights and settings, the guide model, the contrastive batch."""

from __future__ import annotations

from dataclasses import dataclass, field

from ese_trainer.losses.combined_loss import LOSS_TERMS, LossSettings
from ese_trainer.losses.in_batch_negatives import (
    DIRECTIONS,
    GUIDE_MARGIN_STRATEGIES,
    HARDNESS_MODES,
    PARTITION_MODES,
    InBatchSettings,
)

RANKING_TERMS = ("cosent", "angle")
GUIDE_START = "start"  # guide_model: the model training starts from


@dataclass
class LossArguments:
    """``cosent_w·CoSENT + ibn_w·InfoNCE + angle_w·AnglE + hinge_w·hinge`` (:data:`ese_trainer.losses.LOSS_TERMS`):
    weights, scales, the in-batch term's options and how large the contrastive batch is. The defaults are the ones
    chosen on STS-B dev (``bench/quality_vs_peers.py sweep``)."""

    _argument_group_name = "loss"

    cosent_w: float = field(default=1.0, metadata={"help": "Weight of CoSENT (a ranking of the scored pairs' "
                                                   "cosines)."})
    ibn_w: float = field(default=10.0, metadata={"help": "Weight of the in-batch term (InfoNCE over each anchor's "
                                                "softmax of the batch's positives and hard negatives)."})
    angle_w: float = field(default=1.0, metadata={"help": "Weight of AnglE (a ranking of the scored pairs' angles)."})
    hinge_w: float = field(default=0.0, metadata={"help": "Weight of the hinge on each anchor's hardest negative "
                                                  "(PromCSE)."})
    cosent_scale: float = field(default=20.0, metadata={"help": "Inverse temperature of CoSENT."})
    ibn_scale: float = field(default=20.0, metadata={"help": "Inverse temperature of the in-batch term."})
    angle_scale: float = field(default=20.0, metadata={"help": "Inverse temperature of AnglE."})
    hinge_margin: float = field(default=0.2, metadata={"help": "The hinge's margin, in cosine."})
    ibn_directions: list[str] = field(
        default_factory=lambda: ["query_to_doc"],
        metadata={"help": f"Blocks of each anchor's softmax, of {DIRECTIONS}: query_to_doc alone is "
                  "sentence-transformers' MultipleNegativesRankingLoss; add query_to_query (other anchors), "
                  "doc_to_query (the positive against every anchor), doc_to_doc (the positive against the other "
                  "rows' documents)."})
    ibn_partition_mode: str = field(default="joint", metadata={"help": f"{' or '.join(PARTITION_MODES)}: one softmax "
                                                               "over every direction, or one per direction."})
    ibn_hardness_mode: str = field(
        default="none", metadata={"help": f"{', '.join(HARDNESS_MODES)}: which negatives get alpha*sg(cos) added to "
                                  "their logit (hard_negatives: each row's own)."})
    ibn_hardness_strength: float = field(default=0.0, metadata={"help": "alpha of ibn_hardness_mode."})
    guide_model: str | None = field(
        default=None,
        metadata={"help": "A frozen guide model whose similarities filter false negatives (GISTEmbed): a candidate it "
                  f"scores above the anchor's positive leaves the softmax. '{GUIDE_START}': the model training "
                  "starts from; else a folder or Hub id; unset: no guide."})
    guide_margin: float = field(default=0.0, metadata={"help": "How far below the positive a candidate may score, by "
                                                       "the guide, and stay."})
    guide_margin_strategy: str = field(default="absolute",
                                       metadata={"help": f"{' or '.join(GUIDE_MARGIN_STRATEGIES)} guide_margin."})
    gather_across_devices: bool = field(
        default=False,
        metadata={"help": "Compute every term over the global batch: embeddings all-gathered (differentiably) "
                  "from all processes, so each process's negatives include every other process's texts."},
    )
    ibn_cache: bool = field(
        default=False,
        metadata={"help": "GradCache: embed the per-device batch in mini-batches of cache_minibatch_texts texts "
                  "without a graph, so the contrastive batch can grow beyond what fits in memory."},
    )
    cache_minibatch_texts: int = field(default=64, metadata={"help": "Texts per mini-batch with ibn_cache."})

    def __post_init__(self) -> None:
        for term in LOSS_TERMS:
            if getattr(self, f"{term.key}_w") < 0:
                raise ValueError(f"{term.key}_w must be >= 0, got {getattr(self, f'{term.key}_w')}")
        for name in ("cosent_scale", "ibn_scale", "angle_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not any(getattr(self, f"{term.key}_w") for term in LOSS_TERMS):
            raise ValueError("all loss weights are 0: nothing to train")
        if self.cache_minibatch_texts <= 0:
            raise ValueError(f"cache_minibatch_texts must be > 0, got {self.cache_minibatch_texts}")
        self.in_batch_settings()  # every in-batch option checked, the error naming it

    def weights(self) -> dict[str, float]:
        return {term.key: getattr(self, f"{term.key}_w") for term in LOSS_TERMS}

    def in_batch_settings(self) -> InBatchSettings:
        try:
            return InBatchSettings(scale=self.ibn_scale, directions=tuple(self.ibn_directions),
                                   partition_mode=self.ibn_partition_mode, hardness_mode=self.ibn_hardness_mode,
                                   hardness_strength=self.ibn_hardness_strength, guide_margin=self.guide_margin,
                                   guide_margin_strategy=self.guide_margin_strategy)
        except ValueError as error:
            raise ValueError(f"ibn_{error}" if not str(error).startswith("guide") else str(error)) from None

    def settings(self) -> LossSettings:
        return LossSettings(cosent_scale=self.cosent_scale, angle_scale=self.angle_scale,
                            in_batch=self.in_batch_settings(), hinge_margin=self.hinge_margin)

    @property
    def uses_contrastive_terms(self) -> bool:
        return bool(self.ibn_w or self.hinge_w)
