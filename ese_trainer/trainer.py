"""``ESETrainer``: a ``transformers.Trainer`` whose ``compute_loss`` is the combined embedding loss."""

from __future__ import annotations

from collections import defaultdict

import torch
from accelerate.utils import broadcast_object_list
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import EvalLoopOutput, get_last_checkpoint

from ese_trainer.arguments import LossArguments
from ese_trainer.collator import NON_MODEL_KEYS, SCORES_KEY, TEXT_IDS_KEY
from ese_trainer.data import STSPairs
from ese_trainer.distributed import gather_with_grad, gather_without_grad
from ese_trainer.evaluation import evaluate_sts
from ese_trainer.grad_cache import cached_backward, pair_minibatches
from ese_trainer.losses import angle_loss, cosine_loss, in_batch_negative_loss
from ese_trainer.pooling import check_pooling, pooled_embeddings

STS_DEV_METRIC = "sts_dev_spearman"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class ESETrainer(Trainer):
    """Trains an encoder with ``cosine_w·CoSENT + ibn_w·InfoNCE + angle_w·AnglE`` on pooled embeddings.

    Batches come from :class:`ese_trainer.collator.PairCollator`: 2B texts (both sides of B pairs) and
    B float scores. Each loss term is logged on its own (``loss_cosine``, ``loss_ibn``, ``loss_angle``,
    unweighted, averaged over the logging window). Evaluation adds the STS-B dev cosine Spearman
    (``eval_sts_dev_spearman``) used for model selection.
    """

    def __init__(
        self,
        *args,
        loss_args: LossArguments | None = None,
        pooling: str = "mean",
        sts_dev: STSPairs | None = None,
        max_seq_length: int = 128,
        eval_batch_size: int = 128,
        forward_chunks: int = 2,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.loss_args = loss_args or LossArguments()
        self.pooling = check_pooling(pooling)
        self.sts_dev = sts_dev
        self.max_seq_length = max_seq_length
        self.eval_batch_size = eval_batch_size
        self.forward_chunks = forward_chunks
        # The loss is a per-micro-batch mean: let the Trainer divide it by gradient accumulation.
        self.model_accepts_loss_kwargs = False
        if self.loss_args.ibn_cache and self.is_deepspeed_enabled:
            # DeepSpeed steps the optimizer inside every backward; GradCache needs several backwards per step.
            raise ValueError("ibn_cache is not supported under DeepSpeed; use DDP or FSDP, or gather_across_devices")
        self._logged_terms: dict[str, list[torch.Tensor]] = defaultdict(list)

    @staticmethod
    def model_inputs(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value for key, value in inputs.items() if key not in NON_MODEL_KEYS}

    def embed_pairs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled embeddings of both sides (``B x D`` each) of the 2B texts, run in ``forward_chunks``
        length-sorted groups (see :func:`ese_trainer.pooling.pooled_embeddings`)."""
        embeddings = pooled_embeddings(model, self.model_inputs(inputs), self.pooling, self.forward_chunks)
        return embeddings.chunk(2, dim=0)

    def loss_terms(self, emb_a: torch.Tensor, emb_b: torch.Tensor, scores: torch.Tensor,
                   text_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The unweighted terms whose weight is non-zero, keyed by their log name."""
        args = self.loss_args
        terms = {}
        if args.cosine_w:
            terms["loss_cosine"] = cosine_loss(emb_a, emb_b, scores, args.cosine_scale)
        if args.ibn_w:
            terms["loss_ibn"] = in_batch_negative_loss(
                emb_a, emb_b, scores, args.ibn_scale, args.ibn_positive_threshold, text_ids
            )
        if args.angle_w:
            terms["loss_angle"] = angle_loss(emb_a, emb_b, scores, args.angle_scale)
        return terms

    def combine(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = {"loss_cosine": self.loss_args.cosine_w, "loss_ibn": self.loss_args.ibn_w,
                   "loss_angle": self.loss_args.angle_w}
        return sum(weights[name] * value for name, value in terms.items())

    def pair_loss(self, emb_a: torch.Tensor, emb_b: torch.Tensor, inputs: dict[str, torch.Tensor],
                  record: bool) -> torch.Tensor:
        """The combined loss of this batch's pairs, over the global batch with ``gather_across_devices``."""
        scores = inputs[SCORES_KEY].to(emb_a.device)
        text_ids = inputs.get(TEXT_IDS_KEY)
        if self.loss_args.gather_across_devices:
            emb_a, emb_b, scores = gather_with_grad(emb_a), gather_with_grad(emb_b), gather_without_grad(scores)
            if text_ids is not None:
                batch = len(text_ids) // 2  # keep the gathered layout: all first sides, then all second sides
                sides = [gather_without_grad(side) for side in (text_ids[:batch], text_ids[batch:])]
                text_ids = torch.cat(sides)
        terms = self.loss_terms(emb_a, emb_b, scores, text_ids)
        loss = self.combine(terms)
        if not torch.isfinite(loss):
            self._raise_non_finite(terms)
        if record:
            for name, value in terms.items():
                self._logged_terms[name].append(value.detach())
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        emb_a, emb_b = self.embed_pairs(model, inputs)
        loss = self.pair_loss(emb_a, emb_b, inputs, record=model.training)
        if return_outputs:
            return loss, {"embeddings_a": emb_a, "embeddings_b": emb_b}
        return loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """With ``ibn_cache``, GradCache over mini-batches (:mod:`ese_trainer.grad_cache`); else the Trainer's."""
        if not self.loss_args.ibn_cache:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        accumulation = self.current_gradient_accumulation_steps

        def backward(surrogate: torch.Tensor) -> None:
            self.accelerator.backward(surrogate / accumulation)

        num_pairs = inputs[SCORES_KEY].shape[0]
        with self.compute_loss_context_manager():
            loss = cached_backward(
                embed=lambda minibatch: self.embed_pairs(model, minibatch),
                loss_of_embeddings=lambda emb_a, emb_b: self.pair_loss(emb_a, emb_b, inputs, record=True),
                minibatches=pair_minibatches(self.model_inputs(inputs), num_pairs, self.loss_args.cache_minibatch_size),
                backward=backward,
                no_sync=lambda: self.accelerator.no_sync(model),
            )
        return loss / accumulation

    def _raise_non_finite(self, terms: dict[str, torch.Tensor]) -> None:
        values = ", ".join(f"{name}={value.item():.4g}" for name, value in terms.items())
        last = get_last_checkpoint(self.args.output_dir) if self.args.output_dir else None
        resume = f"; resume with --resume_from_checkpoint {last}" if last else " (no checkpoint saved yet)"
        raise NonFiniteLossError(
            f"non-finite loss at step {self.state.global_step + 1} ({values}); "
            f"last good checkpoint: {last or 'none'}{resume}. Lower the learning rate or check the data."
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the mean of each loss term since the last training log, averaged over processes."""
        if "loss" in logs and self._logged_terms:
            for name, values in self._logged_terms.items():
                mean = torch.stack(values).mean()
                logs[name] = round(self.accelerator.reduce(mean, reduction="mean").item(), 6)
            self._logged_terms.clear()
        super().log(logs, start_time)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval") -> EvalLoopOutput:
        """The Trainer's loop (eval loss on the dev pairs) plus the STS dev cosine Spearman ×100."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.sts_dev is not None:
            # Scored by the main process and shared, so every process selects the same best model. A sharded
            # model (FSDP, DeepSpeed) needs every process in its forward pass: all of them encode then.
            sharded = self.is_fsdp_enabled or self.is_deepspeed_enabled
            score = [None]
            if sharded or self.accelerator.is_main_process:
                model = self.model_wrapped if sharded else self.accelerator.unwrap_model(self.model)
                score[0] = evaluate_sts(model, self.processing_class, {"dev": self.sts_dev}, self.pooling,
                                        self.max_seq_length, self.eval_batch_size, show_progress=False)["dev"]
            output.metrics[f"{metric_key_prefix}_{STS_DEV_METRIC}"] = broadcast_object_list(score)[0]
        return output
