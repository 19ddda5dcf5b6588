"""The ``data`` arguments: training sources, the dev pairs for model selection, the STS test suite."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from ese_trainer.data.batching import SOURCE_SAMPLING_STRATEGIES
from ese_trainer.data.nli import DEFAULT_LABEL_MAP, validate_label_map
from ese_trainer.data.rows import RoleThresholds
from ese_trainer.data.sources import NLI_ANCHORS, TrainSource
from ese_trainer.data.sts import EMBEDDED_DATA_DIR, HUB_STS_SOURCE, STS_TASKS


@dataclass
class DataArguments:
    """Training rows (sources, roles), the dev set for model selection and the STS test suite run before and after
    training."""

    _argument_group_name = "data"

    train_datasets: list[str] | None = field(
        default=None,
        metadata={"help": "Several training sources, each batch from one: a YAML list of mappings (source, kind: "
                  "nli|sts|triplet|pair, split, subset, max_samples (rows), weight, label_map, score_range, name, "
                  "mine_negatives, loss_weights, anchors), or their JSON on the command line. Unset: the one NLI "
                  "source given by train_dataset and its keys."},
    )
    train_sampling: str = field(
        default="proportional",
        metadata={"help": f"How batches of several sources are drawn: {' or '.join(SOURCE_SAMPLING_STRATEGIES)}."},
    )
    positive_min_score: float = field(
        default=1.0,
        metadata={"help": "A row's text scoring at least this against its anchor is its positive (the in-batch "
                  "term's target): an NLI entailment (1.0 in the label map), an STS pair of gold 5."})
    negative_max_score: float = field(
        default=0.0,
        metadata={"help": "A row's text scoring at most this is a hard negative (in every anchor's softmax): an NLI "
                  "contradiction (0.0); 0.5 adds neutral. Texts in between are ranking pairs only."})
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
    nli_anchors: str = field(
        default="premise",
        metadata={"help": "What anchors NLI rows: 'premise' (a premise with its hypotheses), or 'both': each row "
                  "with an entailment again anchored on it (the premise its positive, the contradictions its "
                  "negatives), as sentence-transformers' NLI triplets take both anchors; 'both_in_batch': those "
                  "rows for the in-batch term only (each premise-entailment pair ranked once). NLI entries of "
                  "train_datasets without their own 'anchors' take this."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "A random subset of this many rows "
                                                                  "(seeded; an NLI row is a premise with its "
                                                                  "hypotheses, or with nli_anchors both also an "
                                                                  "entailment with its premise)."})
    sts_dev: str = field(
        default="data/STS/STSBenchmark/sts-dev.csv",
        metadata={"help": "STS-B dev pairs for model selection: a file or a Hub id (e.g. mteb/stsbenchmark-sts)."},
    )
    sts_dev_split: str = field(default="validation", metadata={"help": "Split of sts_dev when it is a Hub id."})
    sts_data_dir: str = field(
        default=EMBEDDED_DATA_DIR,
        metadata={"help": "SentEval-layout data folder of the STS test suite (default: the embedded "
                  f"{EMBEDDED_DATA_DIR}/ folder); '{HUB_STS_SOURCE}': the mteb/*-sts Hub datasets."},
    )
    sts_tasks: list[str] = field(
        default_factory=lambda: list(STS_TASKS),
        metadata={"help": "STS test tasks run before and after training; 'none': no test set is read (a tuning run)."}
    )
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
        if [str(task).lower() for task in self.sts_tasks] == ["none"]:
            self.sts_tasks = []
        unknown = [task for task in self.sts_tasks if task not in STS_TASKS]
        if unknown:
            raise ValueError(f"sts_tasks: unknown task(s) {unknown}; choose from {list(STS_TASKS)}")
        if self.max_train_samples is not None and self.max_train_samples <= 0:
            raise ValueError(f"max_train_samples must be positive, got {self.max_train_samples}")
        if self.train_datasets is not None and self.max_train_samples is not None:
            raise ValueError("max_train_samples applies to the single train_dataset; with train_datasets give each "
                             "entry its own max_samples")
        if self.nli_anchors not in NLI_ANCHORS:
            raise ValueError(f"nli_anchors must be one of {NLI_ANCHORS}, got {self.nli_anchors!r}")
        if self.train_sampling not in SOURCE_SAMPLING_STRATEGIES:
            raise ValueError(f"train_sampling must be one of {SOURCE_SAMPLING_STRATEGIES}, got {self.train_sampling!r}")
        self.train_sources()  # errors name the entry and key
        self.role_thresholds()

    def train_sources(self) -> list[TrainSource]:
        """``train_datasets`` parsed, or the single NLI source of ``train_dataset`` and its keys; an NLI source
        without its own ``anchors`` takes ``nli_anchors``."""
        if self.train_datasets is None:
            return [TrainSource(self.train_dataset, "nli", self.train_split, self.train_subset, self.max_train_samples,
                                label_map=self.label_map, anchors=self.nli_anchors)]
        sources = [TrainSource.parse(entry, index) for index, entry in enumerate(self.train_datasets)]
        return [replace(source, anchors=self.nli_anchors) if source.kind == "nli" and source.anchors is None
                else source for source in sources]

    def role_thresholds(self) -> RoleThresholds:
        return RoleThresholds(self.positive_min_score, self.negative_max_score)
