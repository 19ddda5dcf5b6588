"""``ESETrainer``: a ``transformers.Trainer`` whose ``compute_loss`` is the combined embedding loss."""

from __future__ import annotations

import os
from collections import defaultdict

import torch
from accelerate.utils import broadcast_object_list
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalLoopOutput, get_last_checkpoint

from ese_trainer.arguments import ESEArguments, LossArguments
from ese_trainer.collator import NON_MODEL_KEYS, SCORES_KEY, TEXT_IDS_KEY
from ese_trainer.data import STSPairs
from ese_trainer.distributed import gather_with_grad, gather_without_grad
from ese_trainer.ese import CompressionOutput, MoECompressionHead, combine_ese_terms, ese_terms
from ese_trainer.evaluation import evaluate_sts
from ese_trainer.grad_cache import cached_backward, pair_minibatches
from ese_trainer.losses import angle_loss, cosine_loss, in_batch_negative_loss
from ese_trainer.modeling import MOE_MODEL_TYPE, load_balancing_loss, router_z_loss
from ese_trainer.moe_stats import RoutingTally
from ese_trainer.pooling import EncodedBatch, check_pooling, encode_batch

STS_DEV_METRIC = "sts_dev_spearman"
ESE_HEADS_FILE = "ese_compression_heads.pt"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class ESETrainer(Trainer):
    """Trains an encoder with ``cosine_w·CoSENT + ibn_w·InfoNCE + angle_w·AnglE`` on pooled embeddings.

    Batches come from :class:`ese_trainer.collator.PairCollator`: 2B texts (both sides of B pairs) and
    B float scores. Each loss term is logged on its own (``loss_cosine``, ``loss_ibn``, ``loss_angle``,
    unweighted, averaged over the logging window). Evaluation adds the STS-B dev cosine Spearman
    (``eval_sts_dev_spearman``) used for model selection.

    An MoE encoder (:mod:`ese_trainer.modeling`) adds ``router_aux_loss_coef·loss_router_aux +
    router_z_loss_coef·loss_router_z`` and logs each expert's share of the routed tokens. ``ese_args``
    adds the ESE terms (:mod:`ese_trainer.ese`): every transformer layer's pooled embedding and its first k
    dims under the same loss, and the distillation of the first k dims toward a compression target.
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
        ese_args: ESEArguments | None = None,
        router_learning_rate: float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.loss_args = loss_args or LossArguments()
        self.ese_args = ese_args if ese_args is not None and ese_args.ese_enabled else None
        self.router_learning_rate = router_learning_rate
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
        config = self.model.config
        self.moe_config = config if getattr(config, "model_type", None) == MOE_MODEL_TYPE else None
        self.routing = (RoutingTally(config.moe_layer_indices, config.num_experts, config.num_experts_per_tok, "moe")
                        if self.moe_config is not None else None)
        self.num_layers = config.num_hidden_layers
        self.ese_layers: list[int] = []
        self.ese_heads: nn.ModuleDict | None = None
        self.ese_routing: RoutingTally | None = None
        if self.ese_args is not None:
            self.ese_args.check_model(config.hidden_size, self.num_layers)
            # student layers: transformer layers 1..n-1 (never the embedding output), pooled when they are trained
            self.ese_layers = list(range(1, self.num_layers)) if self.ese_args.ese_prior_layers_weight else []
            if self.ese_args.ese_compression_target == "moe":
                head_layers = [*self.ese_layers, *([self.num_layers] if self.ese_args.ese_last_layer_weight else [])]
                self.ese_heads = nn.ModuleDict({
                    str(layer): MoECompressionHead(config.hidden_size, self.ese_args.ese_compression_size,
                                                   self.ese_args.ese_moe_num_experts,
                                                   self.ese_args.ese_moe_expert_hidden, self.ese_args.ese_moe_top_k)
                    for layer in head_layers
                }).to(self.args.device)
                self.ese_routing = RoutingTally(head_layers, self.ese_args.ese_moe_num_experts,
                                                self.ese_args.ese_moe_top_k, "ese_head")
                self.add_callback(_SyncHeadGradients(self))
        if (self.loss_args.ibn_cache and (self.ese_args is not None or self.moe_config is not None)):
            raise ValueError("ibn_cache (GradCache) covers the pair loss only: it cannot be combined with ESE terms "
                             "or an MoE encoder's router losses; use gather_across_devices for a larger batch")

    @staticmethod
    def model_inputs(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value for key, value in inputs.items() if key not in NON_MODEL_KEYS}

    def encode(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> EncodedBatch:
        """Pooled embeddings of the 2B texts (and of the ESE layers), run in ``forward_chunks`` length-sorted
        groups (see :func:`ese_trainer.pooling.encode_batch`), plus an MoE encoder's router logits."""
        return encode_batch(model, self.model_inputs(inputs), self.pooling, self.forward_chunks, self.ese_layers)

    def embed_pairs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled embeddings of both sides (``B x D`` each) of the 2B texts."""
        return self.encode(model, inputs).embeddings.chunk(2, dim=0)

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

    def similarity_terms(self, emb_a: torch.Tensor, emb_b: torch.Tensor,
                         inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The pair-loss terms of this batch, over the global batch with ``gather_across_devices``."""
        scores = inputs[SCORES_KEY].to(emb_a.device)
        text_ids = inputs.get(TEXT_IDS_KEY)
        if self.loss_args.gather_across_devices:
            emb_a, emb_b, scores = gather_with_grad(emb_a), gather_with_grad(emb_b), gather_without_grad(scores)
            if text_ids is not None:
                batch = len(text_ids) // 2  # keep the gathered layout: all first sides, then all second sides
                sides = [gather_without_grad(side) for side in (text_ids[:batch], text_ids[batch:])]
                text_ids = torch.cat(sides)
        return self.loss_terms(emb_a, emb_b, scores, text_ids)

    def pair_loss(self, emb_a: torch.Tensor, emb_b: torch.Tensor, inputs: dict[str, torch.Tensor],
                  record: bool) -> torch.Tensor:
        """The combined loss of this batch's pairs, over the global batch with ``gather_across_devices``."""
        return self._checked_total(self.similarity_terms(emb_a, emb_b, inputs), {}, record)

    def _checked_total(self, terms: dict[str, torch.Tensor], extra: dict[str, tuple[float, torch.Tensor]],
                       record: bool) -> torch.Tensor:
        """``combine(terms) + Σ weight·term`` over ``extra``; stops on a non-finite loss; records the terms."""
        loss = self.combine(terms) + sum(weight * value for weight, value in extra.values())
        logged = {**terms, **{name: value for name, (_, value) in extra.items()}}
        if not torch.isfinite(loss):
            self._raise_non_finite(logged)
        if record:
            for name, value in logged.items():
                self._logged_terms[name].append(value.detach())
        return loss

    def router_terms(self, router_logits: tuple[torch.Tensor, ...],
                     record: bool) -> dict[str, tuple[float, torch.Tensor]]:
        """Switch load-balancing and ST-MoE z-loss of the MoE encoder, with their config weights."""
        config = self.moe_config
        if record:
            self.routing.add(router_logits)
        return {
            "loss_router_aux": (config.router_aux_loss_coef,
                                load_balancing_loss(router_logits, config.num_experts_per_tok)),
            "loss_router_z": (config.router_z_loss_coef, router_z_loss(router_logits)),
        }

    def ese_loss_terms(self, encoded: EncodedBatch, inputs: dict[str, torch.Tensor],
                       record: bool) -> dict[str, tuple[float, torch.Tensor]]:
        """The ESE terms (:func:`ese_trainer.ese.ese_terms`): their weighted sum enters the loss once as
        ``loss_ese``; each term is logged on its own."""
        args = self.ese_args
        layer_embeddings = {layer: embeddings.chunk(2, dim=0) for layer, embeddings in encoded.layer_embeddings.items()}
        layer_embeddings[self.num_layers] = encoded.embeddings.chunk(2, dim=0)
        head_logits: dict[int, torch.Tensor] = {}

        def moe_target(layer: int, embeddings: torch.Tensor) -> CompressionOutput:
            output = self.ese_heads[str(layer)](embeddings)
            head_logits[layer] = output.router_logits
            return output

        terms = ese_terms(
            layer_embeddings, self.num_layers,
            pair_loss=lambda emb_a, emb_b: self.combine(self.similarity_terms(emb_a, emb_b, inputs)),
            compression_size=args.ese_compression_size, kl_temperature=args.ese_kl_temperature,
            layer_weighting=args.ese_layer_weighting, last_layer_weight=args.ese_last_layer_weight,
            prior_layers_weight=args.ese_prior_layers_weight,
            targets=moe_target if self.ese_heads is not None else None,
        )
        if record and head_logits:
            self.ese_routing.add(tuple(head_logits[layer] for layer in self.ese_routing.layer_indices))
        combined = combine_ese_terms(terms, args.ese_last_layer_weight, args.ese_prior_layers_weight,
                                     args.ese_moe_aux_loss_coef)
        return {"loss_ese": (1.0, combined), **{name: (0.0, value) for name, value in terms.items()}}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        encoded = self.encode(model, inputs)
        emb_a, emb_b = encoded.embeddings.chunk(2, dim=0)
        record = model.training
        extra: dict[str, tuple[float, torch.Tensor]] = {}
        if encoded.router_logits is not None and self.moe_config is not None:
            extra.update(self.router_terms(encoded.router_logits, record))
        if self.ese_args is not None:
            extra.update(self.ese_loss_terms(encoded, inputs, record))
        loss = self._checked_total(self.similarity_terms(emb_a, emb_b, inputs), extra, record)
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
        """Adds the mean of each loss term since the last training log, averaged over processes, and the
        routing statistics of the window (summed over processes)."""
        if "loss" in logs and self._logged_terms:
            for name, values in self._logged_terms.items():
                mean = torch.stack(values).mean()
                logs[name] = round(self.accelerator.reduce(mean, reduction="mean").item(), 6)
            self._logged_terms.clear()
            for tally in (self.routing, self.ese_routing):
                if tally is not None:
                    summed = self.accelerator.reduce(tally.as_tensor().to(self.args.device), reduction="sum")
                    logs.update(tally.logs(summed))
                    tally.reset()
        super().log(logs, start_time)

    def create_optimizer(self, model=None):
        """The Trainer's optimizer; MoE routers moved to their own group at ``router_learning_rate``, and a
        group for the ESE ``moe`` target heads (not part of the encoder)."""
        if self.optimizer is not None:
            return self.optimizer
        optimizer = super().create_optimizer(model)
        if self.router_learning_rate is not None:
            routers = {id(parameter) for name, parameter in (model or self.model).named_parameters()
                       if ".moe.router." in name and parameter.requires_grad}
            for group in optimizer.param_groups:
                group["params"] = [parameter for parameter in group["params"] if id(parameter) not in routers]
            optimizer.add_param_group({
                "params": [parameter for parameter in (model or self.model).parameters() if id(parameter) in routers],
                "weight_decay": 0.0, "lr": self.router_learning_rate,
            })
        if self.ese_heads is not None:
            optimizer.add_param_group({"params": list(self.ese_heads.parameters()), "weight_decay": 0.0,
                                       "lr": self.ese_args.ese_moe_learning_rate})
        return optimizer

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.ese_heads is not None and self.is_world_process_zero():
            folder = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            torch.save(self.ese_heads.state_dict(), os.path.join(folder, ESE_HEADS_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        heads_file = os.path.join(resume_from_checkpoint, ESE_HEADS_FILE)
        if self.ese_heads is not None and os.path.isfile(heads_file):
            self.ese_heads.load_state_dict(torch.load(heads_file, map_location=self.args.device))

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


class _SyncHeadGradients(TrainerCallback):
    """The ESE target heads live outside the (DDP-wrapped) encoder, so the Trainer neither synchronises nor
    clears their gradients: average them over processes before each optimizer step, clear them after it
    (the Trainer's ``model.zero_grad()`` does not reach them; left alone they would sum over all steps)."""

    def __init__(self, trainer: ESETrainer) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.accelerator.num_processes > 1:
            for parameter in self.trainer.ese_heads.parameters():
                if parameter.grad is not None:
                    parameter.grad.copy_(self.trainer.accelerator.reduce(parameter.grad, reduction="mean"))

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.ese_heads.zero_grad(set_to_none=True)
