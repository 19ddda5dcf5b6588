"""ESE's settings, defaults and allowed values: the one source the ``ese:`` config section, the loss and the model
card read."""

from dataclasses import dataclass, field, fields

from ese_trainer.ese.layer_weights import LAYER_WEIGHTINGS
from ese_trainer.ese.starbucks import LADDERS, parse_weights

COMPRESSION_TARGETS = ("pca", "moe")
SCHEDULES = ("espresso", "starbucks")
DEFAULT_SCHEDULE = "starbucks"


@dataclass(frozen=True)
class ESESettings:
    """Espresso Sentence Embeddings (Li et al., arXiv 2402.14776): which terms, at which weights (see
    :mod:`ese_trainer.ese.loss`). Invalid values raise ValueError naming the setting."""

    schedule: str = field(
        default=DEFAULT_SCHEDULE, metadata={"help": "starbucks: a fixed list of (layer, dims) slices, each trained "
                                       "with the pair loss every step (Starbucks, arXiv 2410.13230); espresso: every "
                                       "layer and its leading k dims, distilled toward a compression target (ESE). "
                                       "Starbucks is the default: given the training time of its slices trained "
                                       "alone, it came within 0.3 of each of them (docs/results.md)."})
    starbucks_pairs: list[str] | None = field(
        default=None, metadata={"help": "schedule starbucks: the slices as LAYERxDIMS (e.g. 2x32 4x64 6x384); "
                                "default: a diagonal from the model's depth and width (BERT-base: Starbucks' own)."})
    starbucks_ladder: str = field(
        default="diagonal", metadata={"help": "schedule starbucks, without starbucks_pairs: diagonal (the default "
                                      "diagonal) or grid (every layer of the diagonal at every dims of it)."})
    starbucks_slices_per_step: int = field(
        default=0, metadata={"help": "schedule starbucks: slices trained each step; 0: every slice (as published), k: "
                             "a random k of them (drawn from the step count), their terms scaled by slices/k."})
    starbucks_weights: list[str] | None = field(
        default=None, metadata={"help": "schedule starbucks: each slice's weight: one number per slice but the full "
                                "one, small to large; or a layer weighting (uniform, log, linear, depth) of the "
                                "slice's layer, rescaled to mean 1; default: 1 each (as published)."})
    starbucks_distill_weight: float = field(
        default=0.0, metadata={"help": "schedule starbucks: weight of each slice's distillation toward its layer's "
                               "compression target (0: the pair loss alone, as published)."})
    starbucks_similarity_weight: float = field(
        default=0.0, metadata={"help": "schedule starbucks: weight of each slice's in-batch similarities distilled "
                               "toward the full model's (detached; KL over rows, Starbucks' code); 0: off."})
    starbucks_similarity_temperature: float = field(
        default=0.05, metadata={"help": "schedule starbucks: temperature of the similarity distillation (0.05: the "
                                "in-batch term's scale 20)."})
    pca_refresh_steps: int = field(
        default=1, metadata={"help": "Recompute the PCA target's SVD every this many training steps (1: every "
                             "step, the paper's); between refreshes each layer's projection is reused."})
    compression_size: int = field(
        default=128, metadata={"help": "schedule espresso: k, the leading dims trained as an embedding."})
    kl_temperature: float = field(default=1.0, metadata={"help": "Distillation temperature τ (KL scaled by τ²)."})
    layer_weighting: str = field(
        default="log", metadata={"help": "Student layer weights (schedule espresso): uniform 1, log 1/(1+ln(1+l)) "
                                 "(ESE's), linear 1/(1+l) (sentence-transformers'), depth l/n."})
    last_layer_weight: float = field(
        default=1.0, metadata={"help": "schedule espresso: λ_last, weight of the last layer's k-dim terms."})
    prior_layers_weight: float = field(
        default=1.0, metadata={"help": "schedule espresso: λ_prior, weight of the shallower layers' terms."})
    compression_target: str = field(
        default="pca", metadata={"help": "schedule espresso: distillation target of the k dims: "
                                 f"{', '.join(COMPRESSION_TARGETS)} (moe: a learned mixture-of-experts head per "
                                 "layer)."})
    head_num_experts: int = field(default=4, metadata={"help": "compression_target moe: experts per target head."})
    head_expert_hidden: int = field(default=512, metadata={"help": "compression_target moe: each expert's width."})
    head_top_k: int = field(default=2, metadata={"help": "compression_target moe: experts per embedding."})
    head_balance_weight: float = field(
        default=0.1, metadata={"help": "compression_target moe: weight of the heads' load-balancing loss."})
    head_learning_rate: float = field(
        default=1e-3, metadata={"help": "compression_target moe: learning rate of the heads (new, randomly "
                                "initialised: the encoder's fine-tuning rate would leave them untrained)."})

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        other_schedule = [name for name, default in OTHER_SCHEDULE_DEFAULTS[self.schedule].items()
                          if getattr(self, name) != default]
        if other_schedule:
            raise ValueError(schedule_mismatch(other_schedule, self.schedule))
        if self.pca_refresh_steps < 1 or self.starbucks_distill_weight < 0:
            raise ValueError("pca_refresh_steps must be >= 1 and starbucks_distill_weight >= 0")
        if self.starbucks_ladder not in LADDERS:
            raise ValueError(f"starbucks_ladder must be one of {LADDERS}, got {self.starbucks_ladder!r}")
        if self.starbucks_pairs and self.starbucks_ladder != "diagonal":
            raise ValueError("set starbucks_pairs or starbucks_ladder, not both")
        if self.starbucks_slices_per_step < 0:
            raise ValueError(f"starbucks_slices_per_step must be >= 0, got {self.starbucks_slices_per_step}")
        if self.starbucks_similarity_weight < 0 or not self.starbucks_similarity_temperature > 0:
            raise ValueError("starbucks_similarity_weight must be >= 0 and starbucks_similarity_temperature > 0")
        parse_weights(self.starbucks_weights)
        if self.layer_weighting not in LAYER_WEIGHTINGS:
            raise ValueError(f"layer_weighting must be one of {LAYER_WEIGHTINGS}, got {self.layer_weighting!r}")
        if self.compression_target not in COMPRESSION_TARGETS:
            raise ValueError(f"compression_target must be one of {COMPRESSION_TARGETS}, "
                             f"got {self.compression_target!r}")
        if self.compression_size <= 0:
            raise ValueError(f"compression_size must be > 0, got {self.compression_size}")
        if not self.kl_temperature > 0:
            raise ValueError(f"kl_temperature must be > 0, got {self.kl_temperature}")
        if self.last_layer_weight < 0 or self.prior_layers_weight < 0:
            raise ValueError("last_layer_weight and prior_layers_weight must be >= 0")
        if self.head_num_experts < 1 or self.head_expert_hidden < 1:
            raise ValueError("head_num_experts and head_expert_hidden must be >= 1")
        if not 1 <= self.head_top_k <= self.head_num_experts:
            raise ValueError(f"head_top_k must be in 1..head_num_experts ({self.head_num_experts})")
        if self.head_balance_weight < 0 or not self.head_learning_rate > 0:
            raise ValueError("head_balance_weight must be >= 0 and head_learning_rate > 0")

    def check_model(self, hidden_size: int) -> None:
        """Errors that need the encoder's shape: before training starts."""
        if self.schedule == "espresso" and not 0 < self.compression_size < hidden_size:
            raise ValueError(f"compression_size={self.compression_size} must be in 1..{hidden_size - 1} "
                             f"(the model's hidden size is {hidden_size})")


# The settings each schedule alone reads; the rest (schedule, kl_temperature, pca_refresh_steps) both read.
ESPRESSO_ONLY = ("compression_size", "layer_weighting", "last_layer_weight", "prior_layers_weight",
                 "compression_target", "head_num_experts", "head_expert_hidden", "head_top_k", "head_balance_weight",
                 "head_learning_rate")
STARBUCKS_ONLY = tuple(setting.name for setting in fields(ESESettings) if setting.name.startswith("starbucks_"))
SCHEDULE_ONLY = {"espresso": ESPRESSO_ONLY, "starbucks": STARBUCKS_ONLY}
# Under each schedule, the other schedule's settings with their defaults: any other value is an error.
OTHER_SCHEDULE_DEFAULTS = {schedule: {setting.name: setting.default for setting in fields(ESESettings)
                                      if setting.name in SCHEDULE_ONLY[other]}
                           for schedule, other in (("espresso", "starbucks"), ("starbucks", "espresso"))}


def schedule_mismatch(names: list[str], schedule: str, prefix: str = "", defaulted: bool = False) -> str:
    """The error for settings of the schedule other than ``schedule``: what they belong to and how to keep them
    (``prefix``: ``ese.`` in the config's terms; ``defaulted``: the schedule was not set, so it is the default)."""
    owner = "starbucks" if names[0] in STARBUCKS_ONLY else "espresso"
    them = "them" if len(names) > 1 else "it"
    keys = ", ".join(prefix + name for name in names)
    is_default = f" (the default{', which was espresso before' if owner == 'espresso' else ''})" if defaulted else ""
    return (f"{keys} appl{'y' if len(names) > 1 else 'ies'} to schedule {owner} only, and the schedule is "
            f"{schedule}{is_default}: set {prefix}schedule: {owner} to use {them}, or remove {them}")


def setting_names() -> list[str]:
    return [setting.name for setting in fields(ESESettings)]
