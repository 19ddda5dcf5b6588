"""A training run's arguments: the groups parsed from YAML + command line, the checks they must pass before anything
loads, and the settings the recipe relies on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from transformers import TrainingArguments

from ese_trainer.config.parsing import ConfigError
from ese_trainer.data.arguments import DataArguments
from ese_trainer.ese.arguments import ESEArguments
from ese_trainer.losses.arguments import LossArguments
from ese_trainer.modeling.arguments import ModelArguments, MoEArguments
from ese_trainer.training.resume import ResumeArguments
from ese_trainer.training.strategy import ScaleOutArguments

ARGUMENT_GROUPS = (ModelArguments, DataArguments, LossArguments, MoEArguments, ESEArguments, ScaleOutArguments,
                   ResumeArguments, TrainingArguments)


class RunArguments(NamedTuple):
    """Every argument group of a training run."""

    model: ModelArguments
    data: DataArguments
    loss: LossArguments
    moe: MoEArguments
    ese: ESEArguments
    scale_out: ScaleOutArguments
    resume: ResumeArguments
    training: TrainingArguments

    @property
    def is_main_process(self) -> bool:
        return self.training.process_index == 0


def apply_recipe_settings(training: TrainingArguments, loss: LossArguments) -> None:
    """Settings the recipe relies on, whatever the config says: raw text columns kept for the collator, the loss only
    from evaluation, no search for unused parameters under DDP, equal batches on every process."""
    training.remove_unused_columns = False  # the collator reads the raw text columns
    training.prediction_loss_only = True
    if training.ddp_find_unused_parameters is None:
        # Every trainable parameter is in every graph: the pooler is frozen and each MoE expert runs even on
        # 0 tokens, so DDP need not search the graph for unused ones.
        training.ddp_find_unused_parameters = False
    if training.world_size > 1 or loss.gather_across_devices:
        # Equal batches on every process: all-gather needs them, and a short last batch has fewer negatives.
        training.dataloader_drop_last = True


def check_launched_processes(training: TrainingArguments) -> None:
    """Every process the launch started trains as one of the run's processes."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != training.world_size:
        raise ConfigError(f"launched {launched} processes but the Trainer sees {training.world_size}: set "
                          "ACCELERATE_USE_CPU=1 for CPU processes, or use_cpu: true")


def check_model_selection(data: DataArguments, training: TrainingArguments) -> None:
    """Model selection uses a dev split and a dev metric, never a test one."""
    if "test" in Path(data.sts_dev).name.lower() or data.sts_dev_split == "test":
        raise ConfigError(f"sts_dev={data.sts_dev!r} ({data.sts_dev_split}) looks like a test split: "
                          "model selection must use a dev split")
    if training.metric_for_best_model and "test" in training.metric_for_best_model:
        raise ConfigError("metric_for_best_model must not be a test metric")


def check_slice_metric(ese: ESEArguments, training: TrainingArguments) -> None:
    """``sts_dev_slices_spearman`` (the mean of the trained slices' dev scores) exists only when ESE trains slices."""
    metric = (training.metric_for_best_model or "").removeprefix("eval_")
    if metric.startswith("sts_dev_slice") and not ese.ese_enabled:
        raise ConfigError(f"metric_for_best_model={training.metric_for_best_model!r} scores ESE's trained slices: "
                          "set ese.enabled: true, or choose by sts_dev_spearman")


def check_positives_possible(data: DataArguments, loss: LossArguments) -> None:
    """With only NLI sources, some label must score as a positive for the in-batch term to have a target."""
    best_score = max(data.label_map.values())
    only_nli = all(source.kind == "nli" for source in data.train_sources())
    if loss.uses_contrastive_terms and only_nli and best_score < data.positive_min_score:
        raise ConfigError(f"positive_min_score={data.positive_min_score} is above every label_map score "
                          f"(max {best_score}): no row would have a positive for the in-batch term")


def check_sampling(training: TrainingArguments) -> None:
    """The Trainer's own sampling strategies do not apply: the recipe's sampler draws the batches."""
    if str(training.train_sampling_strategy) in ("group_by_length", "TrainSamplingStrategy.GROUP_BY_LENGTH"):
        raise ConfigError("train_sampling_strategy=group_by_length does not apply: rows are batched by source with "
                          "no text twice in a step (data.batching.SourceBatchSampler); remove the key")


def check_grad_cache(loss: LossArguments, strategy: dict) -> None:
    """GradCache runs on one process or under DDP: it needs several backward passes per step and then averages
    whole gradients itself, while DeepSpeed steps inside every backward and FSDP's gradients are sharded."""
    if loss.ibn_cache and strategy["strategy"] in ("fsdp", "deepspeed"):
        raise ConfigError(f"ibn_cache (GradCache) runs on one process or under DDP, not under {strategy['strategy']}: "
                          "set ibn_cache: false, or launch with DDP (recipes/accelerate_configs/ddp.yaml)")


def move_hub_token_to_environment(training: TrainingArguments) -> None:
    """``hub_token`` goes to huggingface_hub through ``HF_TOKEN``, so that ``training_args.bin`` never holds it."""
    if training.hub_token:
        os.environ["HF_TOKEN"] = training.hub_token
        training.hub_token = None


def check_arguments(args: RunArguments) -> None:
    """Settings that cannot work together are a ConfigError naming the key, before anything loads."""
    check_launched_processes(args.training)
    check_model_selection(args.data, args.training)
    check_slice_metric(args.ese, args.training)
    check_positives_possible(args.data, args.loss)
    check_sampling(args.training)
