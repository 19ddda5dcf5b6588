"""The recipe's arguments, grouped like alignment-handbook's: model, data, loss, moe, ese (+ ``TrainingArguments``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from typing import get_type_hints

from ese_trainer.batching import SAMPLING_STRATEGIES
from ese_trainer.data.nli import DEFAULT_LABEL_MAP, validate_label_map
from ese_trainer.data.sources import TrainSource
from ese_trainer.data.sts import EMBEDDED_DATA_DIR, HUB_STS_SOURCE, STS_TASKS
from ese_trainer.ese.settings import ESESettings
from ese_trainer.losses import PAIR_TERMS
from ese_trainer.modeling.configuration_moe_bert import MOE_TYPES, MoEBertConfig
from ese_trainer.packing import PACKED_SETTINGS
from ese_trainer.pooling import check_pooling


@dataclass
class ModelArguments:
    """The encoder: which checkpoint, how its token states are pooled, how long its inputs may be."""

    _argument_group_name = "model"

    model_name_or_path: str = field(
        default="sentence-transformers/all-MiniLM-L6-v2", metadata={"help": "Hub id or local folder of the encoder."}
    )
    pooling: str = field(default="mean", metadata={"help": "cls, mean, cls_avg, max or last (all masked)."})
    max_seq_length: int = field(default=128, metadata={"help": "Truncation length in tokens."})
    embedding_dim: int | None = field(
        default=None, metadata={"help": "Train and release embeddings of the first this many dims (the released "
                                "folder's truncate_dim); default: all."}
    )
    packed: str = field(
        default="auto", metadata={"help": "Padding-free forward (only real tokens through the encoder, attention "
                                  "within each text): auto (every BERT-type encoder, the faster path measured), true "
                                  "or false (padded batches in forward_chunks)."}
    )
    forward_chunks: int = field(
        default=2, metadata={"help": "With padded batches: forward passes per batch, over length-sorted groups of "
                             "its texts (less padding; 1 = one pass over the whole padded batch)."}
    )

    def __post_init__(self) -> None:
        check_pooling(self.pooling)
        if str(self.packed).lower() not in PACKED_SETTINGS:
            raise ValueError(f"packed must be one of {PACKED_SETTINGS}, got {self.packed!r}")
        if self.forward_chunks < 1:
            raise ValueError(f"forward_chunks must be >= 1, got {self.forward_chunks}")
        if self.embedding_dim is not None and self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        if self.max_seq_length <= 0:
            raise ValueError(f"max_seq_length must be positive, got {self.max_seq_length}")


@dataclass
class DataArguments:
    """Training pairs, the dev set for model selection and the STS test suite run before and after training."""

    _argument_group_name = "data"

    train_datasets: list[str] | None = field(
        default=None,
        metadata={"help": "Several training sources, each batch from one: a YAML list of mappings (source, kind: "
                  "nli|sts|triplet, split, subset, max_samples, weight, label_map, score_range, name), or their JSON "
                  "on the command line. Unset: the one NLI source given by train_dataset and its keys."},
    )
    train_sampling: str = field(
        default="proportional",
        metadata={"help": f"How batches of several sources are drawn: {' or '.join(SAMPLING_STRATEGIES)}."},
    )
    hard_negative_batches: bool = field(
        default=False,
        metadata={"help": "Keep an NLI premise's pairs (and a triplet's two pairs) in one batch, so the contradiction "
                  "hypothesis is a hard negative of its premise in the in-batch term (SimCSE's setting)."},
    )
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
    sts_data_dir: str = field(
        default=EMBEDDED_DATA_DIR,
        metadata={"help": "SentEval-layout data folder of the STS test suite (default: the embedded "
                  f"{EMBEDDED_DATA_DIR}/ folder); '{HUB_STS_SOURCE}': the mteb/*-sts Hub datasets."},
    )
    sts_tasks: list[str] = field(
        default_factory=lambda: list(STS_TASKS), metadata={"help": "STS test tasks run before and after training."}
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
        unknown = [task for task in self.sts_tasks if task not in STS_TASKS]
        if unknown:
            raise ValueError(f"sts_tasks: unknown task(s) {unknown}; choose from {list(STS_TASKS)}")
        if self.max_train_samples is not None and self.max_train_samples <= 0:
            raise ValueError(f"max_train_samples must be positive, got {self.max_train_samples}")
        if self.train_datasets is not None and self.max_train_samples is not None:
            raise ValueError("max_train_samples applies to the single train_dataset; with train_datasets give each "
                             "entry its own max_samples")
        if self.train_sampling not in SAMPLING_STRATEGIES:
            raise ValueError(f"train_sampling must be one of {SAMPLING_STRATEGIES}, got {self.train_sampling!r}")
        self.train_sources()  # errors name the entry and key

    def train_sources(self) -> list[TrainSource]:
        """``train_datasets`` parsed, or the single NLI source of ``train_dataset`` and its keys."""
        if self.train_datasets is None:
            return [TrainSource(self.train_dataset, "nli", self.train_split, self.train_subset, self.max_train_samples,
                                label_map=self.label_map)]
        return [TrainSource.parse(entry, index) for index, entry in enumerate(self.train_datasets)]


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


def _set_fields(arguments: object, prefix: str) -> list[str]:
    return [name for name in arguments.__dataclass_fields__
            if name.startswith(prefix) and name != f"{prefix}enabled" and getattr(arguments, name) is not None]


@dataclass
class MoEArguments:
    """The ``moe:`` section: convert the (dense BERT) checkpoint into a Mixture-of-Experts encoder
    (:func:`ese_trainer.modeling.build_moe`). Unset keys take :class:`~ese_trainer.modeling.MoEBertConfig`'s
    defaults, shown in each key's help."""

    _argument_group_name = "moe (YAML section moe:, or --moe.key)"

    moe_enabled: bool = field(default=False, metadata={"help": "Build an MoE encoder from model_name_or_path."})
    moe_num_experts: int | None = field(
        default=None, metadata={"help": f"Experts per MoE layer ({MoEBertConfig.num_experts})."})
    moe_num_experts_per_tok: int | None = field(
        default=None, metadata={"help": f"Top-k experts per token ({MoEBertConfig.num_experts_per_tok})."})
    moe_layers: list[str] | None = field(
        default=None, metadata={"help": "all, every_2 (layers 1, 3, ...) or 0-based layer indices "
                                f"({MoEBertConfig.moe_layers})."})
    moe_type: str | None = field(
        default=None, metadata={"help": f"{' or '.join(MOE_TYPES)} ({MoEBertConfig.moe_type})."})
    moe_expert_intermediate_size: int | None = field(
        default=None, metadata={"help": "Expert width (upcycled: the dense FFN's; residual: its 1/num_experts)."})
    moe_norm_topk_prob: bool | None = field(
        default=None, metadata={"help": f"Renormalise top-k weights ({MoEBertConfig.norm_topk_prob})."})
    moe_router_jitter_noise: float | None = field(
        default=None, metadata={"help": f"Router input jitter ({MoEBertConfig.router_jitter_noise})."})
    moe_router_aux_loss_coef: float | None = field(
        default=None, metadata={"help": f"Load-balancing weight ({MoEBertConfig.router_aux_loss_coef})."})
    moe_router_z_loss_coef: float | None = field(
        default=None, metadata={"help": f"Router z-loss weight ({MoEBertConfig.router_z_loss_coef})."})
    moe_router_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the (freshly initialised) routers; default: learning_rate. "
                                "Fine-tuning rates leave a new router near its random start."}
    )

    def __post_init__(self) -> None:
        stray = _set_fields(self, "moe_")
        if stray and not self.moe_enabled:
            keys = ", ".join("moe." + name.removeprefix("moe_") for name in stray)
            raise ValueError(f"{keys} set but moe.enabled is false: enable MoE or remove the key(s)")

    def moe_settings(self) -> dict:
        """The set keys as :class:`~ese_trainer.modeling.MoEBertConfig` fields."""
        settings = {}
        for name in _set_fields(self, "moe_"):
            if name == "moe_router_learning_rate":  # an optimizer setting, not part of the model
                continue
            value = getattr(self, name)
            if name == "moe_layers":
                value = value[0] if len(value) == 1 and not value[0].lstrip("-").isdigit() else [int(v) for v in value]
                settings["moe_layers"] = value
            elif name == "moe_type":
                settings["moe_type"] = value
            else:
                settings[name.removeprefix("moe_")] = value
        return settings


def _ese_post_init(self) -> None:
    stray = _set_fields(self, "ese_")
    if stray and not self.ese_enabled:
        keys = ", ".join("ese." + name.removeprefix("ese_") for name in stray)
        raise ValueError(f"{keys} set but ese.enabled is false: enable ESE or remove the key(s)")
    if self.ese_enabled:  # every key resolved (resolved_config.yaml and the card show what was used); validated
        for name, value in asdict(self.settings()).items():
            setattr(self, f"ese_{name}", value)


def _ese_settings(self) -> ESESettings:
    """The set keys as :class:`~ese_trainer.ese.ESESettings` (unset keys take its defaults)."""
    try:
        return ESESettings(**{name.removeprefix("ese_"): getattr(self, name) for name in _set_fields(self, "ese_")})
    except ValueError as error:
        raise ValueError(f"ese.{error}") from None


def _make_ese_arguments() -> type:
    """The ``ese:`` section: ``ese_enabled`` plus one optional key per :class:`~ese_trainer.ese.ESESettings` field,
    with its help and default read from there (the one source of ESE's settings)."""
    hints = get_type_hints(ESESettings)
    keys = [("ese_enabled", bool, field(default=False, metadata={"help": "Add the ESE layer and compression terms."}))]
    for setting in fields(ESESettings):
        help_text = f"{setting.metadata['help']} Default: {setting.default}."
        keys.append((f"ese_{setting.name}", hints[setting.name] | None,
                     field(default=None, metadata={"help": help_text})))
    namespace = {"__post_init__": _ese_post_init, "settings": _ese_settings, "__module__": __name__,
                 "_argument_group_name": "ese (YAML section ese:, or --ese.key)",
                 "__doc__": "The ``ese:`` section: Espresso Sentence Embeddings (Li et al., arXiv 2402.14776) "
                            "training terms (see :mod:`ese_trainer.ese`)."}
    return make_dataclass("ESEArguments", keys, namespace=namespace)


ESEArguments = _make_ese_arguments()
