"""What a training run starts from: its checked arguments, the strategy that will run, what it trains on (its
fingerprint) and the checkpoint it resumes from, all settled before the model or the data load."""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
from transformers import TrainingArguments, set_seed

from ese_trainer.config.parsing import parse_config
from ese_trainer.training.fingerprint import run_fingerprint
from ese_trainer.training.resume import ResumePoint, find_resume_checkpoint, resume_point
from ese_trainer.training.run_arguments import (
    ARGUMENT_GROUPS,
    RunArguments,
    apply_recipe_settings,
    check_arguments,
    check_grad_cache,
    move_hub_token_to_environment,
)
from ese_trainer.training.strategy import check_strategy, configured_deepspeed_arguments

logger = logging.getLogger(__name__)


def cpu_computes_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere torch emulates it."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def warn_emulated_bf16(training: TrainingArguments) -> bool:
    """Warn when bf16 (``bf16`` autocast, ``bf16_full_eval``) runs on a CPU without native bf16, where torch emulates
    it at many times float32's cost; returns whether it warned."""
    asked = [key for key in ("bf16", "bf16_full_eval") if getattr(training, key)]
    on_cpu = training.use_cpu or not torch.cuda.is_available()
    if not asked or not on_cpu or cpu_computes_bf16():
        return False
    logger.warning("%s on a CPU without native bf16 (AVX512-BF16 or AMX): torch emulates it, many times slower than "
                   "float32; set %s false here", " and ".join(asked), " and ".join(asked))
    return True


class RunStart(NamedTuple):
    """``strategy``: what was asked and what will run (:func:`~ese_trainer.training.strategy.check_strategy`);
    ``fingerprint``: what the run trains on (:mod:`~ese_trainer.training.fingerprint`), recorded in its checkpoints;
    ``resume``: the checkpoint it resumes from, or None."""

    strategy: dict
    fingerprint: dict
    resume: ResumePoint | None

    @property
    def checkpoint(self) -> str | None:
        """What ``Trainer.train(resume_from_checkpoint=…)`` takes."""
        return self.resume.checkpoint if self.resume else None


def start_run(argv: list[str], prog: str | None = None, description: str | None = None
              ) -> tuple[RunArguments, RunStart]:
    """Parse and check the arguments, set up logging, check the strategy, fingerprint the run, find the checkpoint to
    resume from (complete, and trained on the same things), set the seed. Every refusal is a ConfigError before the
    model or the data load."""
    argv = [*argv, *configured_deepspeed_arguments()]
    args = RunArguments(*parse_config(argv, ARGUMENT_GROUPS, prog=prog, description=description))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if args.is_main_process else logging.WARNING)
    check_arguments(args)
    strategy = check_strategy(args.training, args.scale_out.allow_strategy_fallback)
    check_grad_cache(args.loss, strategy)
    apply_recipe_settings(args.training, args.loss)
    move_hub_token_to_environment(args.training)
    if args.is_main_process:
        warn_emulated_bf16(args.training)
    fingerprint = run_fingerprint(args.model, args.data, args.loss, args.moe, args.ese, args.training)
    checkpoint = find_resume_checkpoint(args.training.resume_from_checkpoint, args.training.output_dir,
                                        warn=args.is_main_process)
    resume = resume_point(checkpoint, fingerprint, args.resume.resume_despite_changes, warn=args.is_main_process)
    set_seed(args.training.seed)
    return args, RunStart(strategy, fingerprint, resume)
