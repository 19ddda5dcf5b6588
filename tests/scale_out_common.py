"""One SGD step of a tiny BERT through ESETrainer, shared by the in-process and 2-process scale-out tests."""

import tempfile

import torch
from transformers import AutoTokenizer, TrainingArguments

from ese_trainer.data.collator import RowCollator
from ese_trainer.ese.arguments import ESEArguments
from ese_trainer.hub_models import resolve_model_path
from ese_trainer.losses.arguments import LossArguments
from ese_trainer.modeling.encoding import SentenceEncoder
from ese_trainer.training.build import build_objective
from ese_trainer.training.trainer import ESETrainer
from tests.conftest import MINILM_ID, REPO, build_tiny_bert, build_tiny_moe, snli_rows

ROWS_PER_PROCESS = 6
LEARNING_RATE = 0.5


def one_sgd_step(per_device_rows: int, model_kind: str = "dense", ese: dict | None = None, **loss_options) -> dict:
    """Parameters' change and logged loss after one plain-SGD step on the first rows of SNLI dev (a premise with
    its hypotheses; processes hold different numbers of texts).

    ``model_kind`` ``dense`` (tiny BERT) or ``moe`` (the same with 4 experts, top-2); ``ese`` the ``ese:`` keys
    (enabled), e.g. ``{"compression_target": "moe"}``. With plain SGD (no momentum, no decay, no clipping) the
    change is ``-lr · gradient``, so comparing changes compares gradients — of the encoder and of the objective's
    own heads.
    """
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(MINILM_ID))
    model = (build_tiny_moe if model_kind == "moe" else build_tiny_bert)(len(tokenizer), seed=0)
    rows = snli_rows(64, seed=5)
    ese_keys = {"schedule": "espresso", "compression_size": 8, **(ese or {})}
    ese_args = ESEArguments() if ese is None else ESEArguments(
        ese_enabled=True, **{f"ese_{key}": value for key, value in ese_keys.items()})
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=per_device_rows, max_steps=1,
            learning_rate=LEARNING_RATE, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0,
            max_grad_norm=0.0, logging_steps=1, save_strategy="no", report_to="none", remove_unused_columns=False,
            train_sampling_strategy="sequential", use_cpu=True, seed=0, dataloader_pin_memory=False,
            dataloader_drop_last=True, disable_tqdm=True, ddp_find_unused_parameters=False,
        )
        loss_args = LossArguments(**loss_options)
        torch.manual_seed(0)  # the ESE heads' initialisation
        objective = build_objective(loss_args, ese_args, model.config)
        # One forward pass per (mini-)batch: the comparisons below are about gathering and caching, and
        # length-sorted chunks (tested on their own) would add summation-order rounding on top.
        trainer = ESETrainer(SentenceEncoder(model, "mean", forward_chunks=1), objective, args=args,
                             train_dataset=rows, data_collator=RowCollator(tokenizer, 64), processing_class=tokenizer,
                             cache_minibatch_size=loss_args.cache_minibatch_texts if loss_args.ibn_cache else None)
        trained = trainer.accelerator.unwrap_model(trainer.model)
        before = {name: parameter.detach().clone() for name, parameter in trained.named_parameters()}
        trainer.train()
    deltas = {name: (parameter.detach() - before[name]) for name, parameter in trained.named_parameters()}
    return {"loss": trainer.state.log_history[0]["loss"], "deltas": deltas, "log": trainer.state.log_history[0]}


FSDP_STEPS = 3
FSDP_CONFIG = REPO / "recipes" / "accelerate_configs" / "fsdp.yaml"


def fsdp_wrap_policy(model: torch.nn.Module):
    """accelerate's FSDP2 auto-wrap policy for ``model`` under ``fsdp.yaml``'s ``fsdp_config``."""
    import yaml
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    config = yaml.safe_load(FSDP_CONFIG.read_text())["fsdp_config"]
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=config["fsdp_version"], auto_wrap_policy=config["fsdp_auto_wrap_policy"].lower(),
        transformer_cls_names_to_wrap=config.get("fsdp_transformer_layer_cls_to_wrap"))
    return fsdp2_prepare_auto_wrap_policy(plugin, model)


def fsdp_steps(model_kind: str, shard: bool, rows_per_process: int = ROWS_PER_PROCESS) -> dict:
    """``FSDP_STEPS`` AdamW steps of the tiny ``model_kind`` encoder (``dense``/``moe``, dropout 0, packed forward)
    with the recipe's objective on SNLI rows, global batches of ``2 x rows_per_process`` rows.

    ``shard``: under an initialised 2-process group, ``fully_shard`` every module accelerate's policy picks (the
    encoder's layers and embeddings, by ``_no_split_modules``), then the whole model, on a CPU mesh; each rank trains
    on its half of every global batch, negatives gathered across ranks. Else one process on the whole global batch.
    The MoE router terms are off here: they are per-process by design (load balance over each rank's tokens) under
    any data parallelism. Returns the per-step losses, every full parameter after the last step and, sharded, each
    parameter's placement and the wrapped units' classes; the largest change of any parameter.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from ese_trainer.training.training_model import TrainingModel

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(MINILM_ID))
    model = (build_tiny_moe if model_kind == "moe" else build_tiny_bert)(len(tokenizer), seed=0)
    if model_kind == "moe":
        model.config.router_aux_loss_coef = model.config.router_z_loss_coef = 0.0
    objective = build_objective(LossArguments(gather_across_devices=shard), ESEArguments(), model.config)
    training_model = TrainingModel(SentenceEncoder(model, "mean", packed=True), objective)
    rank, processes = (dist.get_rank(), dist.get_world_size()) if shard else (0, 1)
    start = {name: parameter.detach().clone() for name, parameter in training_model.named_parameters()}
    wrapped = []
    if shard:
        mesh = init_device_mesh("cpu", (processes,))
        policy = fsdp_wrap_policy(training_model)
        units = [module for module in training_model.modules() if module is not training_model and policy(module)]
        for module in reversed(units):  # innermost first
            wrapped.append(type(module).__name__)
            fully_shard(module, mesh=mesh)
        fully_shard(training_model, mesh=mesh)
    optimizer = torch.optim.AdamW(training_model.parameters(), lr=1e-3, weight_decay=0.01)
    rows = snli_rows(64, seed=5)
    collator = RowCollator(tokenizer, 64)
    global_rows = 2 * rows_per_process
    local = global_rows // processes
    losses = []
    for step in range(FSDP_STEPS):
        first = step * global_rows + rank * local
        batch = collator([dict(rows[index]) for index in range(first, first + local)])
        loss = training_model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    parameters, placements = {}, {}
    for name, parameter in training_model.named_parameters():
        if isinstance(parameter, DTensor):
            placements[name] = (str(parameter.placements), parameter.device_mesh.size())
            parameters[name] = parameter.full_tensor().detach().clone()
        else:
            placements[name] = None
            parameters[name] = parameter.detach().clone()
    largest_change = max((parameters[name] - start[name]).abs().max().item() for name in start)
    return {"losses": losses, "parameters": parameters, "placements": placements, "wrapped": wrapped,
            "largest_change": largest_change}
