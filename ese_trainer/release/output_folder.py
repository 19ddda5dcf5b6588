"""A run's output folder: the files written before training, and after it the released model, its scores, plots,
model card and (optionally) the Hub push."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, TrainingArguments

from ese_trainer.data.batching import SourceBatchSampler
from ese_trainer.data.run_data import RunData
from ese_trainer.ese.starbucks import ladder_slices
from ese_trainer.evaluation.layer_grid import ENCODE_SECONDS_KEY, encode_time_per_depth, evaluate_layer_dim_grid
from ese_trainer.evaluation.sts import evaluate_sts
from ese_trainer.modeling.packing import eval_packing
from ese_trainer.release.export import add_sentence_transformer_files
from ese_trainer.release.hub_push import push_model_dir
from ese_trainer.release.model_card import write_model_card
from ese_trainer.release.plots import plot_loss_curves
from ese_trainer.release.routing_report import save_expert_utilisation
from ese_trainer.release.run_io import earlier_runs, save_grid, save_json, save_resolved_config, save_sts_results
from ese_trainer.training.objective import ESE_HEAD_ROUTING, MOE_ROUTING
from ese_trainer.training.run_arguments import RunArguments
from ese_trainer.training.run_start import RunStart
from ese_trainer.training.strategy import accelerator_record, wrapper_record
from ese_trainer.training.trainer import ESETrainer

logger = logging.getLogger(__name__)

ESE_GRID_FILE = "ese_grid"
# What each routed component's utilisation file is called.
UTILISATION_FILES = {MOE_ROUTING: "expert_utilisation", ESE_HEAD_ROUTING: "ese_head_utilisation"}


def score_suite(encoder: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, args: RunArguments,
                data: RunData) -> dict[str, float]:
    """The STS suite's scores of ``encoder`` (cosine Spearman ×100 per task, and their average)."""
    return evaluate_sts(encoder, tokenizer, data.suite, args.model.pooling, args.model.max_seq_length,
                        args.training.per_device_eval_batch_size,
                        packed=eval_packing(args.model.packed, encoder.config), max_dim=args.model.embedding_dim,
                        bf16=args.training.bf16_full_eval)


def epochs_drawn(training: TrainingArguments, batches_per_epoch: int) -> int:
    """How many epochs of batches the Trainer draws (transformers ``Trainer.set_initial_training_values``): its
    optimizer steps per epoch are the batches per process over the accumulation, rounded up."""
    updates = max(math.ceil(batches_per_epoch / training.gradient_accumulation_steps), 1)
    return math.ceil(training.max_steps / updates) if training.max_steps > 0 else math.ceil(training.num_train_epochs)


def relaxed_batches(sampler: SourceBatchSampler, epochs: int) -> list[int]:
    """Per epoch the run draws, the steps that had to take a row sharing a text (the first epoch drawn last, so the
    sampler keeps it for training)."""
    counts = {epoch: sampler.epoch_steps(epoch).relaxed for epoch in [*range(1, epochs), 0]}
    return [counts[epoch] for epoch in range(epochs)]


def start_output_dir(args: RunArguments, start: RunStart, data: RunData, trainer: ESETrainer) -> Path:
    """``resolved_config.yaml``, ``run_info.json``, ``data_counts.json`` (main process). ``run_info.json`` records
    the strategy with what the Trainer's accelerator set up, and the run's fingerprint; a resumed run records where it
    resumed and what changed, and keeps the record of the runs before it (:func:`earlier_runs`)."""
    output_dir, training = Path(args.training.output_dir), args.training
    if not args.is_main_process:
        return output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    earlier = earlier_runs(output_dir) if start.resume else []
    save_resolved_config(output_dir, *args)
    encoder = trainer.accelerator.unwrap_model(trainer.model).encoder.transformer
    global_batch = training.per_device_train_batch_size * training.world_size
    run_info = {
        "world_size": training.world_size,
        "global_train_batch_size": global_batch,
        "rows_per_optimizer_step": global_batch * training.gradient_accumulation_steps,
        "contrastive_batch_rows": global_batch if args.loss.gather_across_devices
        else training.per_device_train_batch_size,
        "distributed_type": str(training.distributed_state.distributed_type),
        "strategy": {**start.strategy, "accelerator": accelerator_record(trainer.accelerator)},
        "embedding_dimension": encoder.config.hidden_size,
        "model_type": encoder.config.model_type,
        "parameters": sum(parameter.numel() for parameter in encoder.parameters()),
        "fingerprint": start.fingerprint,
    }
    if start.resume:
        run_info["resumed_from"] = start.resume.record()
    if earlier:
        run_info["earlier_runs"] = earlier
    save_json(output_dir / "run_info.json", run_info)
    counts = data.counts_report()
    epochs = epochs_drawn(training, sum(data.sampler.steps_per_source()))
    counts["relaxed_batches"] = relaxed_batches(data.sampler, epochs)
    logger.info("relaxed_batches per epoch: %s (steps that had to take a row sharing a text)",
                counts["relaxed_batches"])
    save_json(output_dir / "data_counts.json", counts)
    return output_dir


def release_run(trainer: ESETrainer, tokenizer: PreTrainedTokenizerBase, args: RunArguments, data: RunData,
                tables: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Save the trained encoder (the best checkpoint's, with ``load_best_model_at_end``) as a sentence-transformers
    folder, score it as released, and write the plots, utilisation files, ESE grid, model card; push if asked."""
    output_dir = Path(args.training.output_dir)
    # Every process: FSDP/DeepSpeed gather the full weights here.
    state = trainer.accelerator.get_state_dict(trainer.model)
    if trainer.is_world_process_zero():
        prefix = "encoder.transformer."
        transformer = trainer.accelerator.unwrap_model(trainer.model).encoder.transformer
        transformer.save_pretrained(output_dir, state_dict={key.removeprefix(prefix): value
                                                            for key, value in state.items() if key.startswith(prefix)})
        tokenizer.save_pretrained(output_dir)
        released = add_sentence_transformer_files(output_dir, args.model.pooling, args.model.max_seq_length,
                                                  truncate_dim=args.model.embedding_dim)
        run_info = json.loads((output_dir / "run_info.json").read_text())
        run_info["strategy"]["trained_by"] = wrapper_record(trainer.model_wrapped)
        save_json(output_dir / "run_info.json", run_info)
        history = trainer.state.log_history
        plot_loss_curves(history, output_dir / "loss_curves.png", f"eval_{trainer.evaluator.metric}")
        for prefix_name, tally in trainer.recorder.tallies.items():
            save_expert_utilisation(history, output_dir, tally.num_experts, tally.top_k, prefix=prefix_name,
                                    name=UTILISATION_FILES[prefix_name])
        if data.suite:
            logger.info("STS suite after training (the saved model, as released)")
            released_encoder = released[0].model.to(args.training.device)
            tables["after"] = score_suite(released_encoder, tokenizer, args, data)
            table = save_sts_results(output_dir, tables, args.model.model_name_or_path)
            print(f"\nSTS (cosine Spearman x100, {args.model.pooling} pooling)\n{table}\n")
            if args.ese.ese_enabled:
                write_ese_grid(released_encoder, tokenizer, args, data)
        write_model_card(output_dir)
        if args.training.push_to_hub:  # a given token was moved to HF_TOKEN (move_hub_token_to_environment)
            url = push_model_dir(output_dir, args.training.hub_model_id, args.training.hub_private_repo)
            print(f"pushed to the Hub: {url}")
        if trainer.state.best_model_checkpoint:
            print(f"best checkpoint by STS-B dev: {trainer.state.best_model_checkpoint} "
                  f"({trainer.state.best_metric:.2f})")
        remote_code = ", trust_remote_code=True" if args.moe.moe_enabled else ""
        print(f"model saved to {output_dir} (load with SentenceTransformer({str(output_dir)!r}{remote_code}))")
    trainer.accelerator.wait_for_everyone()
    return tables


def write_ese_grid(encoder: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, args: RunArguments,
                   data: RunData) -> None:
    """``ese_grid.json/.md/.png``: the suite's average for every layer at D/2 and D leading dims and (schedule
    espresso) k/2 and k, or (schedule starbucks) the dims of every slice it trained; and the encode time of the model
    cut to each depth (on up to 256 test sentences) for the card's size recommendation."""
    logger.info("ESE layer x dimension grid of the released model")
    settings, hidden = args.ese.settings(), encoder.config.hidden_size
    if settings.schedule == "starbucks":
        slices = ladder_slices(settings.starbucks_pairs, settings.starbucks_ladder, encoder.config.num_hidden_layers,
                               hidden)
        dims = {hidden // 2, hidden, *(dim for _, dim in slices)}
    else:
        dims = {settings.compression_size // 2, settings.compression_size, hidden // 2, hidden}
    dims = sorted(dim for dim in dims if 1 <= dim <= hidden)
    grid = evaluate_layer_dim_grid(encoder, tokenizer, data.suite, args.model.pooling, "all", dims,
                                   args.model.max_seq_length, args.training.per_device_eval_batch_size)
    timed = next(iter(data.suite.values()))
    sentences = list(dict.fromkeys(timed.sentences1 + timed.sentences2))[:256]
    grid[ENCODE_SECONDS_KEY] = encode_time_per_depth(encoder, tokenizer, sentences, args.model.pooling, "all",
                                                     args.model.max_seq_length,
                                                     args.training.per_device_eval_batch_size)
    grid["timed_on"] = f"{len(sentences)} sentences of {timed.name}, median of 2"
    output_dir = Path(args.training.output_dir)
    save_grid(grid, output_dir / ESE_GRID_FILE, f"{output_dir.name}: STS avg by layer x dims")
