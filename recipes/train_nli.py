"""Fine-tune a sentence encoder on NLI pairs with the combined CoSENT + in-batch-negative + AnglE loss.

    accelerate launch recipes/train_nli.py --config configs/smoke.yaml [--key value ...]

The STS suite runs before and after training; the best checkpoint is chosen on STS-B *dev*; the output
folder holds the model in sentence-transformers layout, ``eval_results.json``/``.md``, the resolved config,
the data counts and a loss-curve plot.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModel, AutoTokenizer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from ese_trainer.arguments import DataArguments, ESEArguments, LossArguments, ModelArguments, MoEArguments
from ese_trainer.cli import run_cli
from ese_trainer.collator import PairCollator, add_length_column
from ese_trainer.config import ConfigError, parse_config
from ese_trainer.data import DataError, load_nli_pairs, load_sts_pairs, load_sts_task
from ese_trainer.evaluation import evaluate_sts
from ese_trainer.export import add_sentence_transformer_files
from ese_trainer.hub_models import ModelNotFoundError, resolve_model_path, work_offline_if_hub_unreachable
from ese_trainer.hub_push import PushError, check_push_ready, push_model_dir
from ese_trainer.layer_grid import evaluate_layer_dim_grid, save_grid
from ese_trainer.model_card import write_model_card
from ese_trainer.modeling import MoEConversionError, MoELoadingError, build_moe, is_moe_model
from ese_trainer.moe_stats import save_expert_utilisation
from ese_trainer.plots import plot_loss_curves
from ese_trainer.run_io import save_json, save_resolved_config, save_sts_results
from ese_trainer.trainer import STS_DEV_METRIC, ESETrainer, NonFiniteLossError

logger = logging.getLogger("train_nli")
ARGUMENT_GROUPS = (ModelArguments, DataArguments, LossArguments, MoEArguments, ESEArguments, TrainingArguments)
ESE_GRID_FILE = "ese_grid"

PROG = "recipes/train_nli.py"


def resolve_resume_checkpoint(value: str | None, output_dir: str) -> str | None:
    """``--resume_from_checkpoint last`` (or ``true``) means the newest checkpoint in ``output_dir``."""
    if value is None or value.lower() in ("", "false", "none"):
        return None
    if value.lower() in ("last", "true"):
        last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if last is None:
            raise ConfigError(f"resume_from_checkpoint={value}: no checkpoint-* folder in {output_dir}")
        return last
    if not Path(value).is_dir():
        raise ConfigError(f"resume_from_checkpoint: {value} is not a folder")
    return value


def prepare_training_arguments(training_args: TrainingArguments, data_args: DataArguments,
                               loss_args: LossArguments, moe_args: MoEArguments | None = None,
                               ese_args: ESEArguments | None = None) -> None:
    """Settings the recipe relies on, whatever the config says."""
    # The collator reads the raw text columns.
    training_args.remove_unused_columns = False
    training_args.prediction_loss_only = True
    if training_args.ddp_find_unused_parameters is None:
        # Every trainable parameter is in every graph: the pooler is frozen and each MoE expert runs even on
        # 0 tokens, so DDP need not search the graph for unused ones.
        training_args.ddp_find_unused_parameters = False
    if loss_args.ibn_cache and ((moe_args and moe_args.moe_enabled) or (ese_args and ese_args.ese_enabled)):
        raise ConfigError("ibn_cache (GradCache) covers the pair loss only: it cannot be combined with moe or ese; "
                          "use gather_across_devices for a larger contrastive batch")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != training_args.world_size:
        raise ConfigError(
            f"launched {launched} processes but the Trainer sees {training_args.world_size}: on CPU, set "
            "ACCELERATE_USE_CPU=1 (accelerate launch sets it only for single-process CPU runs) or use_cpu: true"
        )
    if training_args.world_size > 1 or loss_args.gather_across_devices:
        # Equal batches on every process: all-gather needs them, and a short last batch has fewer negatives.
        training_args.dataloader_drop_last = True
    if "test" in Path(data_args.sts_dev).name.lower() or data_args.sts_dev_split == "test":
        raise ConfigError(f"sts_dev={data_args.sts_dev!r} ({data_args.sts_dev_split}) looks like a test split: "
                          "model selection must use a dev split")
    if training_args.metric_for_best_model and "test" in training_args.metric_for_best_model:
        raise ConfigError("metric_for_best_model must not be a test metric")
    best_score = max(data_args.label_map.values())
    if loss_args.ibn_w and best_score < loss_args.ibn_positive_threshold:
        raise ConfigError(f"ibn_positive_threshold={loss_args.ibn_positive_threshold} is above every label_map score "
                          f"(max {best_score}): the in-batch-negative term would have no positive pair")
    if training_args.hub_token:
        # Handed to huggingface_hub through the environment, so that training_args.bin never holds it.
        os.environ["HF_TOKEN"] = training_args.hub_token
        training_args.hub_token = None


def run(argv: list[str]) -> dict:
    model_args, data_args, loss_args, moe_args, ese_args, training_args = parse_config(
        argv, ARGUMENT_GROUPS, prog=PROG, description=__doc__)
    work_offline_if_hub_unreachable()
    prepare_training_arguments(training_args, data_args, loss_args, moe_args, ese_args)
    resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    if training_args.push_to_hub:  # before anything slow: offline, no token or no Hub fails now
        check_push_ready(training_args.hub_model_id)
    is_main = training_args.process_index == 0
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if is_main else logging.WARNING)
    set_seed(training_args.seed)
    output_dir = Path(training_args.output_dir)

    model_path = resolve_model_path(model_args.model_name_or_path)
    logger.info("model %s -> %s", model_args.model_name_or_path, model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = load_encoder(model_path, moe_args)
    try:
        ese_args.check_model(model.config.hidden_size, model.config.num_hidden_layers)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if getattr(model, "pooler", None) is not None:
        # Sentence embeddings come from our pooling; a frozen pooler keeps DDP from waiting on its gradients.
        model.pooler.requires_grad_(False)
    model.to(training_args.device)

    with training_args.main_process_first(desc="loading data"):
        train_dataset, counts = load_nli_pairs(
            data_args.train_dataset, data_args.train_split, data_args.train_subset, data_args.label_map,
            data_args.max_train_samples, training_args.data_seed or training_args.seed,
        )
    sts_dev = load_sts_pairs(data_args.sts_dev, data_args.sts_dev_split, name="sts_dev")
    eval_dataset = Dataset.from_dict({"sentence1": sts_dev.sentences1, "sentence2": sts_dev.sentences2,
                                      "score": sts_dev.scores})
    if training_args.train_sampling_strategy == "group_by_length":
        train_dataset, eval_dataset = (
            add_length_column(dataset, tokenizer, model_args.max_seq_length, training_args.length_column_name)
            for dataset in (train_dataset, eval_dataset)
        )
    suite = {task: load_sts_task(task, data_args.sts_data_dir) for task in data_args.sts_tasks}

    def run_suite(encoder: torch.nn.Module) -> dict[str, float]:
        return evaluate_sts(encoder, tokenizer, suite, model_args.pooling, model_args.max_seq_length,
                            training_args.per_device_eval_batch_size)

    tables: dict[str, dict[str, float]] = {}
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_resolved_config(output_dir, model_args, data_args, loss_args, moe_args, ese_args, training_args)
        global_batch = training_args.per_device_train_batch_size * training_args.world_size
        save_json(output_dir / "run_info.json", {
            "world_size": training_args.world_size,
            "global_train_batch_size": global_batch,
            "pairs_per_optimizer_step": global_batch * training_args.gradient_accumulation_steps,
            "contrastive_batch_pairs": global_batch if loss_args.gather_across_devices
            else training_args.per_device_train_batch_size,
            "distributed_type": str(training_args.distributed_state.distributed_type),
            "embedding_dimension": model.config.hidden_size,
            "model_type": model.config.model_type,
            "parameters": sum(parameter.numel() for parameter in model.parameters()),
        })
        save_json(output_dir / "data_counts.json", {"train": counts.to_dict(), "sts_dev_pairs": len(sts_dev),
                                                     "sts_test_pairs": {name: len(p) for name, p in suite.items()}})
        if suite and data_args.suite_before_training:
            logger.info("STS suite before training (%s)", model_args.model_name_or_path)
            tables["before"] = run_suite(model)

    trainer = ESETrainer(
        model=model,
        args=training_args,
        data_collator=PairCollator(tokenizer, model_args.max_seq_length),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        loss_args=loss_args,
        pooling=model_args.pooling,
        sts_dev=sts_dev,
        max_seq_length=model_args.max_seq_length,
        eval_batch_size=training_args.per_device_eval_batch_size,
        forward_chunks=model_args.forward_chunks,
        ese_args=ese_args,
        router_learning_rate=moe_args.moe_router_learning_rate,
    )
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()

    # Every process: FSDP/DeepSpeed gather the full weights here. (_internal_call: no push yet; the
    # finished folder, with its card, is pushed below.)
    trainer.save_model(str(output_dir), _internal_call=True)
    if trainer.is_world_process_zero():
        released = add_sentence_transformer_files(output_dir, model_args.pooling, model_args.max_seq_length)
        plot_loss_curves(trainer.state.log_history, output_dir / "loss_curves.png", f"eval_{STS_DEV_METRIC}")
        if trainer.moe_config is not None:
            save_expert_utilisation(trainer.state.log_history, output_dir, trainer.moe_config.num_experts,
                                    trainer.moe_config.num_experts_per_tok)
        if trainer.ese_heads is not None:
            save_expert_utilisation(trainer.state.log_history, output_dir, ese_args.ese_moe_num_experts,
                                    ese_args.ese_moe_top_k, prefix="ese_head", name="ese_head_utilization")
        if suite:
            logger.info("STS suite after training (the saved model, as released)")
            released_encoder = released[0].model.to(training_args.device)
            tables["after"] = run_suite(released_encoder)
            table = save_sts_results(output_dir, tables, model_args.model_name_or_path)
            print(f"\nSTS (cosine Spearman x100, {model_args.pooling} pooling)\n{table}\n")
            if ese_args.ese_enabled:
                logger.info("ESE layer x dimension grid of the released model")
                hidden = model.config.hidden_size
                k = ese_args.ese_compression_size
                dims = sorted({dim for dim in (k // 2, k, hidden // 2, hidden) if dim >= 1})
                grid = evaluate_layer_dim_grid(released_encoder, tokenizer, suite, model_args.pooling, "all", dims,
                                               model_args.max_seq_length, training_args.per_device_eval_batch_size)
                save_grid(grid, output_dir / ESE_GRID_FILE, f"{output_dir.name}: STS avg by layer x dims")
        write_model_card(output_dir)
        if training_args.push_to_hub:  # the token, if given, was moved to HF_TOKEN by prepare_training_arguments
            url = push_model_dir(output_dir, training_args.hub_model_id, training_args.hub_private_repo)
            print(f"pushed to the Hub: {url}")
        if trainer.state.best_model_checkpoint:
            print(f"best checkpoint by STS-B dev: {trainer.state.best_model_checkpoint} "
                  f"({trainer.state.best_metric:.2f})")
        remote_code = ", trust_remote_code=True" if trainer.moe_config is not None else ""
        print(f"model saved to {output_dir} (load with SentenceTransformer({str(output_dir)!r}{remote_code}))")
    trainer.accelerator.wait_for_everyone()
    return tables


def load_encoder(model_path: str, moe_args: MoEArguments) -> torch.nn.Module:
    """The encoder to train: the checkpoint as is, or converted to an MoE encoder (``moe.enabled``)."""
    if not moe_args.moe_enabled:
        return AutoModel.from_pretrained(model_path)
    if is_moe_model(model_path):
        raise ConfigError(f"{model_path} is already an MoE model: train it without the moe section")
    try:
        return build_moe(model_path, **moe_args.moe_settings())
    except MoEConversionError as error:
        raise ConfigError(str(error)) from None


if __name__ == "__main__":
    run_cli(run, (DataError, ModelNotFoundError, NonFiniteLossError, PushError, MoELoadingError))
