"""Fine-tune a sentence encoder on NLI data (and STS, triplet, pair sources) with the combined loss: in-batch
negatives over grouped rows (each premise with its entailment as positive, its contradiction as hard negative)
plus the CoSENT and AnglE rankings of every scored pair.

    accelerate launch recipes/train_nli.py --config configs/smoke.yaml [--key value ...]

The STS suite runs before and after training; the best checkpoint is chosen on STS-B *dev*; the output
folder holds the model in sentence-transformers layout, ``eval_results.json``/``.md``, the resolved config,
the data counts, a loss-curve plot and the model card.
"""

from __future__ import annotations

from ese_trainer.config.cli import run_cli
from ese_trainer.data import DataError
from ese_trainer.data.collator import RowCollator
from ese_trainer.data.run_data import load_run_data
from ese_trainer.evaluation.dev_score import CosineSpearman
from ese_trainer.evaluation.slice_score import SliceSpearman
from ese_trainer.hub_models import ModelNotFoundError, resolve_model_path, work_offline_if_hub_unreachable
from ese_trainer.modeling import MoELoadingError
from ese_trainer.modeling.encoding import SentenceEncoder
from ese_trainer.modeling.loading import load_tokenizer_and_encoder
from ese_trainer.modeling.packing import use_packing
from ese_trainer.release.hub_push import PushError, check_push_ready
from ese_trainer.release.output_folder import release_run, score_suite, start_output_dir
from ese_trainer.training.build import build_objective, guide_embeddings, learning_rates
from ese_trainer.training.run_arguments import ARGUMENT_GROUPS
from ese_trainer.training.run_start import start_run
from ese_trainer.training.strategy import confirm_strategy
from ese_trainer.training.trainer import CheckpointMismatchError, ESETrainer, NonFiniteLossError

PROG = "recipes/train_nli.py"
# Errors that end a run with a one-line message (exit 1), not a traceback.
EXPECTED_ERRORS = (DataError, ModelNotFoundError, NonFiniteLossError, CheckpointMismatchError, PushError,
                   MoELoadingError)
__all__ = ["ARGUMENT_GROUPS", "run"]


def run(argv: list[str], callbacks: list | None = None) -> dict:
    """Train, evaluate and release one run; ``callbacks`` (``transformers.TrainerCallback``) join the Trainer's own,
    e.g. a hyperparameter search that stops a run early."""
    # ---- config ----
    args, start = start_run(argv, prog=PROG, description=__doc__)
    if args.training.push_to_hub:  # before anything slow: a run that cannot push stops now, not after training
        check_push_ready(args.training.hub_model_id)
    work_offline_if_hub_unreachable()

    # ---- model and objective ----
    tokenizer, encoder = load_tokenizer_and_encoder(args.model, args.moe)
    objective = build_objective(args.loss, args.ese, encoder.config,
                                [source.loss_weights for source in args.data.train_sources()])
    encoder.to(args.training.device)

    # ---- data ----
    start_model = resolve_model_path(args.model.model_name_or_path)  # mines negatives, guides the softmax
    data = load_run_data(args.data, args.training, mining_model=start_model)
    guide = guide_embeddings(args.loss, start_model, data.texts(), args.model.pooling, args.model.max_seq_length,
                             args.training.per_device_eval_batch_size)

    # ---- trainer ----
    trainer = ESETrainer(
        SentenceEncoder(encoder, args.model.pooling, args.model.forward_chunks,
                        packed=use_packing(args.model.packed, encoder.config), embedding_dim=args.model.embedding_dim),
        objective,
        args=args.training,
        data_collator=RowCollator(tokenizer, args.model.max_seq_length, guide),
        train_dataset=data.train,
        eval_dataset=data.dev,
        processing_class=tokenizer,
        evaluator=CosineSpearman("sts_dev"),
        slice_evaluator=(SliceSpearman(objective.dev_slices, encoder.config.num_hidden_layers, "sts_dev")
                         if objective.dev_slices else None),
        learning_rates=learning_rates(args.moe, args.ese),
        cache_minibatch_size=args.loss.cache_minibatch_texts if args.loss.ibn_cache else None,
        train_batch_sampler=data.sampler,
        fingerprint=start.fingerprint,
        callbacks=callbacks,
    )
    confirm_strategy(start.strategy, trainer.accelerator)  # what the accelerator set up is what was checked
    start_output_dir(args, start, data, trainer)
    tables = {}
    if args.is_main_process and data.suite and args.data.suite_before_training:
        tables["before"] = score_suite(encoder, tokenizer, args, data)

    # ---- train ----
    train_result = trainer.train(resume_from_checkpoint=start.checkpoint)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()

    # ---- save, evaluate, card, push ----
    return release_run(trainer, tokenizer, args, data, tables)


if __name__ == "__main__":
    run_cli(run, EXPECTED_ERRORS)
