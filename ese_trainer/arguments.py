"""The recipe's arguments, grouped like alignment-handbook's: model, data, loss (+ ``TrainingArguments``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ese_trainer.data.nli import DEFAULT_LABEL_MAP, validate_label_map
from ese_trainer.data.sts import STS_TASKS
from ese_trainer.pooling import check_pooling


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="sentence-transformers/all-MiniLM-L6-v2", metadata={"help": "Hub id or local folder of the encoder."}
    )
    pooling: str = field(default="mean", metadata={"help": "cls, mean, cls_avg, max or last (all masked)."})
    max_seq_length: int = field(default=128, metadata={"help": "Truncation length in tokens."})
    forward_chunks: int = field(
        default=2, metadata={"help": "Training forward passes per batch, over length-sorted groups of its texts "
                             "(less padding; 1 = one pass over the whole padded batch)."}
    )

    def __post_init__(self) -> None:
        check_pooling(self.pooling)
        if self.forward_chunks < 1:
            raise ValueError(f"forward_chunks must be >= 1, got {self.forward_chunks}")
        if self.max_seq_length <= 0:
            raise ValueError(f"max_seq_length must be positive, got {self.max_seq_length}")


@dataclass
class DataArguments:
    train_dataset: str = field(
        default="data/SNLI",
        metadata={"help": "NLI pairs: Hub id (sentence-transformers/all-nli, stanfordnlp/snli, nyu-mll/multi_nli), "
                  "a jsonl/csv/tsv file or a SentEval SNLI folder (s1.*, s2.*, labels.*)."},
    )
    train_subset: str | None = field(default=None, metadata={"help": "Hub dataset config, e.g. pair-class."})
    train_split: str = field(default="train", metadata={"help": "Split (or SentEval file suffix) to train on."})
    label_map: dict | str | None = field(
        default=None,
        metadata={"help": "NLI label name -> similarity score in [0, 1] (YAML mapping or JSON string); "
                  "default entailment 1.0, neutral 0.5, contradiction 0.0."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Random subset size (seeded)."})
    sts_dev: str = field(
        default="data/STS/STSBenchmark/sts-dev.csv",
        metadata={"help": "STS-B dev pairs for model selection: a file or a Hub id (e.g. mteb/stsbenchmark-sts)."},
    )
    sts_dev_split: str = field(default="validation", metadata={"help": "Split of sts_dev when it is a Hub id."})
    sts_data_dir: str | None = field(
        default=None,
        metadata={"help": "SentEval data folder for the test suite; unset: the mteb/*-sts Hub datasets."},
    )
    sts_tasks: list[str] = field(
        default_factory=lambda: list(STS_TASKS), metadata={"help": "STS test tasks run before and after training."}
    )
    eval_batch_size: int = field(default=128, metadata={"help": "Batch size for STS encoding."})
    suite_before_training: bool = field(
        default=True, metadata={"help": "Also score the base model on the STS suite (the 'before' row)."}
    )

    def __post_init__(self) -> None:
        if self.label_map is None:
            self.label_map = dict(DEFAULT_LABEL_MAP)
        elif isinstance(self.label_map, str):
            try:
                self.label_map = json.loads(self.label_map)
            except json.JSONDecodeError:
                raise ValueError(f"label_map: {self.label_map!r} is not a mapping of label name to score") from None
        if not isinstance(self.label_map, dict):
            raise ValueError(f"label_map must be a mapping of label name to score, got {self.label_map!r}")
        self.label_map = validate_label_map(self.label_map)
        unknown = [task for task in self.sts_tasks if task not in STS_TASKS]
        if unknown:
            raise ValueError(f"sts_tasks: unknown task(s) {unknown}; choose from {list(STS_TASKS)}")
        if self.max_train_samples is not None and self.max_train_samples <= 0:
            raise ValueError(f"max_train_samples must be positive, got {self.max_train_samples}")


@dataclass
class LossArguments:
    """Weights and scales of ``cosine_w·CoSENT + ibn_w·InfoNCE + angle_w·AnglE`` (see ``ese_trainer.losses``)."""

    cosine_w: float = field(default=1.0, metadata={"help": "Weight of the CoSENT (cosine) term."})
    ibn_w: float = field(default=1.0, metadata={"help": "Weight of the in-batch-negative term."})
    angle_w: float = field(default=1.0, metadata={"help": "Weight of the AnglE term."})
    cosine_scale: float = field(default=20.0, metadata={"help": "Inverse temperature of the CoSENT term."})
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
        for name in ("cosine_w", "ibn_w", "angle_w"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.cosine_w == self.ibn_w == self.angle_w == 0:
            raise ValueError("all loss weights are 0: nothing to train")
        for name in ("cosine_scale", "ibn_scale", "angle_scale", "cache_minibatch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
