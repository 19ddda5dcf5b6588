"""A training run's arguments: parsed from YAML + command line, checked, and made into what the recipe relies on."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import NamedTuple

from safetensors import safe_open
from transformers import TrainingArguments, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ese_trainer.config.parsing import ConfigError, parse_config
from ese_trainer.data.arguments import DataArguments
from ese_trainer.errors import describe_error
from ese_trainer.ese.arguments import ESEArguments
from ese_trainer.losses.arguments import LossArguments
from ese_trainer.modeling.arguments import ModelArguments, MoEArguments
from ese_trainer.training.strategy import ScaleOutArguments, check_strategy, configured_deepspeed_arguments

logger = logging.getLogger(__name__)

ARGUMENT_GROUPS = (ModelArguments, DataArguments, LossArguments, MoEArguments, ESEArguments, ScaleOutArguments,
                   TrainingArguments)


class RunArguments(NamedTuple):
    """Every argument group of a training run."""

    model: ModelArguments
    data: DataArguments
    loss: LossArguments
    moe: MoEArguments
    ese: ESEArguments
    scale_out: ScaleOutArguments
    training: TrainingArguments

    @property
    def is_main_process(self) -> bool:
        return self.training.process_index == 0


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from (weights missing or unreadable, as after a crash mid-save; no trainer
    state), or None when it can."""
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not weights:
        return "no model weights"
    for path in weights:
        if path.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # noqa: BLE001  (safetensors raises its own error types)
            return f"{path.name} is unreadable ({describe_error(error)})"
    state = folder / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError) as error:
        return f"trainer_state.json is unreadable ({describe_error(error)})"
    return None


def resolve_resume_checkpoint(value: str | None, output_dir: str) -> str | None:
    """``--resume_from_checkpoint last`` (or ``true``) means the newest checkpoint in ``output_dir`` that can be read:
    a newest one left broken by a crash mid-save is skipped for the previous one, with a warning. A checkpoint named
    explicitly must be readable."""
    if value is None or value.lower() in ("", "false", "none"):
        return None
    if value.lower() in ("last", "true"):
        found = Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if Path(output_dir).is_dir() else []
        folders = sorted((path for path in found if path.is_dir() and path.name.split("-")[-1].isdigit()),
                         key=lambda path: int(path.name.split("-")[-1]), reverse=True)
        if not folders:
            raise ConfigError(f"resume_from_checkpoint={value}: no checkpoint-* folder in {output_dir}")
        skipped = []
        for folder in folders:
            problem = checkpoint_problem(folder)
            if problem is None:
                if skipped:
                    logger.warning("resume_from_checkpoint=%s: skipped %s; resuming from %s", value,
                                   "; ".join(skipped), folder)
                return str(folder)
            skipped.append(f"{folder} ({problem})")
        raise ConfigError(f"resume_from_checkpoint={value}: no checkpoint in {output_dir} can be read: "
                          + "; ".join(skipped))
    if not Path(value).is_dir():
        raise ConfigError(f"resume_from_checkpoint: {value} is not a folder")
    problem = checkpoint_problem(Path(value))
    if problem is not None:
        raise ConfigError(f"resume_from_checkpoint: {value} cannot be resumed from: {problem}")
    return value


def prepare_training_arguments(args: RunArguments) -> None:
    """Settings the recipe relies on, whatever the config says; inconsistent settings are a ConfigError."""
    training, data, loss = args.training, args.data, args.loss
    training.remove_unused_columns = False  # the collator reads the raw text columns
    training.prediction_loss_only = True
    if training.ddp_find_unused_parameters is None:
        # Every trainable parameter is in every graph: the pooler is frozen and each MoE expert runs even on
        # 0 tokens, so DDP need not search the graph for unused ones.
        training.ddp_find_unused_parameters = False
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != training.world_size:
        raise ConfigError(f"launched {launched} processes but the Trainer sees {training.world_size}: set "
                          "ACCELERATE_USE_CPU=1 for CPU processes, or use_cpu: true")
    args.scale_out.strategy = check_strategy(training, args.scale_out.allow_strategy_fallback)
    if training.world_size > 1 or loss.gather_across_devices:
        # Equal batches on every process: all-gather needs them, and a short last batch has fewer negatives.
        training.dataloader_drop_last = True
    if "test" in Path(data.sts_dev).name.lower() or data.sts_dev_split == "test":
        raise ConfigError(f"sts_dev={data.sts_dev!r} ({data.sts_dev_split}) looks like a test split: "
                          "model selection must use a dev split")
    if training.metric_for_best_model and "test" in training.metric_for_best_model:
        raise ConfigError("metric_for_best_model must not be a test metric")
    best_score = max(data.label_map.values())
    only_nli = all(source.kind == "nli" for source in data.train_sources())
    if loss.uses_contrastive_terms and only_nli and best_score < data.positive_min_score:
        raise ConfigError(f"positive_min_score={data.positive_min_score} is above every label_map score "
                          f"(max {best_score}): no row would have a positive for the in-batch term")
    if str(training.train_sampling_strategy) in ("group_by_length", "TrainSamplingStrategy.GROUP_BY_LENGTH"):
        raise ConfigError("train_sampling_strategy=group_by_length does not apply: rows are batched by source with "
                          "no text twice in a step (data.batching.SourceBatchSampler); remove the key")
    if training.hub_token:
        # Handed to huggingface_hub through the environment, so that training_args.bin never holds it.
        os.environ["HF_TOKEN"] = training.hub_token
        training.hub_token = None


def start_run(argv: list[str], prog: str | None = None, description: str | None = None) -> tuple[RunArguments,
                                                                                                  str | None]:
    """Parse and check the arguments, find the checkpoint to resume from, set up logging and the seed. Returns the
    arguments and the checkpoint (or None)."""
    argv = [*argv, *configured_deepspeed_arguments()]
    args = RunArguments(*parse_config(argv, ARGUMENT_GROUPS, prog=prog, description=description))
    prepare_training_arguments(args)
    resume = resolve_resume_checkpoint(args.training.resume_from_checkpoint, args.training.output_dir)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if args.is_main_process else logging.WARNING)
    set_seed(args.training.seed)
    return args, resume
