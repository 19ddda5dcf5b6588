"""``ESETrainer``: a ``transformers.Trainer`` that trains a sentence encoder with an embedding objective."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalLoopOutput

from ese_trainer.data.batching import SourceBatchSampler
from ese_trainer.data.collator import (
    GUIDE_KEY,
    OTHER_ROLE_KEY,
    OTHER_ROW_KEY,
    OTHER_SCORE_KEY,
    SOURCE_KEY,
    TEXT_IDS_KEY,
)
from ese_trainer.evaluation.dev_score import CosineSpearman
from ese_trainer.evaluation.slice_score import SliceSpearman
from ese_trainer.modeling.encoding import MODEL_INPUT_KEYS, SentenceEncoder
from ese_trainer.training.distributed import average_gradients
from ese_trainer.training.fingerprint import write_fingerprint
from ese_trainer.training.grad_cache import cached_step, text_minibatches
from ese_trainer.training.objective import EmbeddingObjective, ObjectiveOutput
from ese_trainer.training.resume import newest_complete_checkpoint
from ese_trainer.training.term_log import TermRecorder, routing_tallies
from ese_trainer.training.training_model import TrainingModel, row_batch


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's weights do not match the model being trained (missing or unexpected keys)."""


class ESETrainer(Trainer):
    """Trains ``model`` (a :class:`~ese_trainer.modeling.encoding.SentenceEncoder`) with ``objective`` (an
    :class:`~ese_trainer.training.objective.EmbeddingObjective`); the Trainer trains both as one
    :class:`~ese_trainer.training.training_model.TrainingModel`, so the objective's own heads are optimised,
    synchronised, cleared and checkpointed with the encoder.

    ``compute_loss`` is: encode → objective → finite check → record. Every term of the objective is logged (window
    mean, averaged over processes) beside ``loss``, their weighted sum; routed components log each expert's share
    and the routing entropy. ``evaluator`` (:class:`~ese_trainer.evaluation.dev_score.CosineSpearman`) scores the
    evaluation pass itself — one encoding of the dev pairs gives the eval loss and ``eval_sts_dev_spearman``;
    ``slice_evaluator`` (:class:`~ese_trainer.evaluation.slice_score.SliceSpearman`, an ESE run) scores each trained
    (layer, dims) slice in the same pass. ``learning_rates`` maps parameter-name patterns (regular expressions,
    searched) to their own learning rate (sentence-transformers' ``learning_rate_mapping``).
    ``cache_minibatch_size`` turns on GradCache (:mod:`ese_trainer.training.grad_cache`) over the whole objective;
    ``train_batch_sampler`` (:class:`~ese_trainer.data.batching.SourceBatchSampler`) draws the training batches (one
    source per step, no text twice in a step). ``fingerprint`` (:mod:`ese_trainer.training.fingerprint`: what the
    run trains on) goes into every checkpoint, before its weights, so that a resume can tell whether it continues
    the same run.
    """

    def __init__(self, model: SentenceEncoder, objective: EmbeddingObjective, *args,
                 evaluator: CosineSpearman | None = None, learning_rates: dict[str, float] | None = None,
                 cache_minibatch_size: int | None = None, train_batch_sampler: SourceBatchSampler | None = None,
                 fingerprint: dict | None = None, slice_evaluator: SliceSpearman | None = None, **kwargs) -> None:
        super().__init__(TrainingModel(model, objective), *args, **kwargs)
        self.evaluator, self.learning_rates = evaluator, dict(learning_rates or {})
        self.slice_evaluator = slice_evaluator
        self.train_batch_sampler = train_batch_sampler
        self.cache_minibatch_size = cache_minibatch_size
        self.fingerprint = fingerprint
        self.model_accepts_loss_kwargs = False  # the loss is a per-micro-batch mean: let the Trainer average it
        if cache_minibatch_size and (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            # DeepSpeed steps inside every backward; FSDP's gradients are sharded: GradCache needs several backward
            # passes per step and then averages whole gradients itself.
            raise ValueError("ibn_cache (GradCache) runs on one process or under DDP; not under DeepSpeed or FSDP")
        self.recorder = TermRecorder(routing_tallies(self.model))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        output = model(**inputs)
        self._check_finite(output)
        if model.training:
            self.recorder.add(output)
        else:
            self._score_dev_pairs(output)
        return (output.loss, output) if return_outputs else output.loss

    def _check_finite(self, output: ObjectiveOutput) -> None:
        """A NaN or infinite loss stops training, naming the step, the terms and the checkpoint to resume from."""
        if torch.isfinite(output.loss):
            return
        values = ", ".join(f"{name}={value.item():.4g}" for name, value in output.terms.items())
        last = newest_complete_checkpoint(self.args.output_dir) if self.args.output_dir else None
        resume = f"; resume with --resume_from_checkpoint {last}" if last else " (no checkpoint saved yet)"
        raise NonFiniteLossError(f"non-finite loss at step {self.state.global_step + 1} ({values}); last good "
                                 f"checkpoint: {last or 'none'}{resume}. Lower the learning rate or check the data.")

    def _score_dev_pairs(self, output: ObjectiveOutput) -> None:
        """Feed the evaluation batch's pair cosines and gold scores (gathered from every process) to ``evaluator``,
        and each slice's to ``slice_evaluator``."""
        pairs = output.pairs
        if self.evaluator is not None:
            cosines = self.evaluator.pair_cosines(pairs.emb_a, pairs.emb_b)
            self.evaluator.add(*self.accelerator.gather_for_metrics((cosines, pairs.scores)))
        if self.slice_evaluator is not None:
            cosines = self.slice_evaluator.pair_cosines(pairs, output.layer_pairs or {})
            self.slice_evaluator.add(*self.accelerator.gather_for_metrics((cosines, pairs.scores)))

    def training_step(self, model, inputs, num_items_in_batch=None):
        """With ``cache_minibatch_size``, GradCache over mini-batches of that many texts; else the Trainer's."""
        if not self.cache_minibatch_size:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        training_model = self.accelerator.unwrap_model(model)
        accumulation = self.current_gradient_accumulation_steps
        features = {key: inputs[key] for key in MODEL_INPUT_KEYS if key in inputs}
        minibatches = text_minibatches(features, self.cache_minibatch_size)

        def objective(encoded):
            batch = row_batch(encoded.embeddings, inputs[OTHER_ROW_KEY], inputs[OTHER_ROLE_KEY],
                              inputs[OTHER_SCORE_KEY], inputs.get(TEXT_IDS_KEY), inputs.get(GUIDE_KEY),
                              inputs.get(SOURCE_KEY))
            output = training_model.objective(encoded, batch)
            self._check_finite(output)
            self.recorder.add(output)
            return output

        with self.compute_loss_context_manager(), self.accelerator.no_sync(model):
            output = cached_step(training_model.encoder, objective, minibatches,
                                 lambda loss: self.accelerator.backward(loss / accumulation))
        average_gradients(training_model.parameters())  # the passes ran unsynchronised: average as DDP would
        return output.loss.detach() / accumulation

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the window's terms and routing shares; the run's last, partial window goes into its final log."""
        if ("loss" in logs or "train_runtime" in logs) and self.recorder.pending:
            logs.update(self.recorder.logs(self.accelerator))
        super().log(logs, start_time)

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, with each ``learning_rates`` pattern's parameters in a group of their own."""
        if self.optimizer is not None:
            return self.optimizer
        optimizer = super().create_optimizer(model)
        named = list((model or self.model).named_parameters())
        for pattern, learning_rate in self.learning_rates.items():
            chosen = {id(parameter) for name, parameter in named
                      if re.search(pattern, name) and parameter.requires_grad}
            if not chosen:
                raise ValueError(f"learning_rates: no trainable parameter matches {pattern!r}")
            for group in optimizer.param_groups:
                group["params"] = [parameter for parameter in group["params"] if id(parameter) not in chosen]
            optimizer.add_param_group({"params": [p for _, p in named if id(p) in chosen], "weight_decay": 0.0,
                                       "lr": learning_rate})
        return optimizer

    def get_train_dataloader(self) -> DataLoader:
        if self.train_batch_sampler is None:
            return super().get_train_dataloader()
        return self.accelerator.prepare(DataLoader(
            self.train_dataset, batch_sampler=self.train_batch_sampler, collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory))

    def get_eval_dataloader(self, eval_dataset=None):
        """Every dev pair is scored: the last, partial batch is kept whatever ``dataloader_drop_last`` says."""
        drop_last, self.args.dataloader_drop_last = self.args.dataloader_drop_last, False
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.args.dataloader_drop_last = drop_last

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval") -> EvalLoopOutput:
        """The Trainer's loop (eval loss on the dev pairs), scoring the same pass with ``evaluator`` and
        ``slice_evaluator``."""
        for scorer in (self.evaluator, self.slice_evaluator):
            if scorer is not None:
                scorer.reset()
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.evaluator is not None:
            output.metrics[f"{metric_key_prefix}_{self.evaluator.metric}"] = self.evaluator.compute()
        if self.slice_evaluator is not None:
            output.metrics.update({f"{metric_key_prefix}_{name}": value
                                   for name, value in self.slice_evaluator.compute().items()})
        return output

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, with the run's fingerprint written first (``trainer_state.json``, written last,
        marks a checkpoint complete, so a complete one always holds it)."""
        if self.fingerprint is not None and self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            write_fingerprint(folder, self.fingerprint)
        super()._save_checkpoint(model, trial)

    def _issue_warnings_after_load(self, load_result) -> None:
        """Resuming or loading the best checkpoint must restore every weight: a mismatch is an error."""
        if load_result.missing_keys or load_result.unexpected_keys:
            missing, unexpected = load_result.missing_keys[:8], load_result.unexpected_keys[:8]
            raise CheckpointMismatchError(f"checkpoint does not match the model: missing {missing}, "
                                          f"unexpected {unexpected}")
