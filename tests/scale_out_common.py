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
from tests.conftest import MINILM_ID, build_tiny_bert, build_tiny_moe, snli_rows

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
    ese_args = ESEArguments() if ese is None else ESEArguments(
        ese_enabled=True, **{f"ese_{key}": value for key, value in {"compression_size": 8, **ese}.items()})
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
