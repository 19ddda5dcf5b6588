"""What the recipes share at their entry point: CPU threads, and expected errors as one line and an exit code."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable

import torch

from ese_trainer.config.deepspeed_op import prepare_comm_op
from ese_trainer.config.parsing import ConfigError

logger = logging.getLogger(__name__)


def mark_cpu_processes() -> bool:
    """On a machine without GPUs, mark the processes of a multi-process launch as CPU processes (gloo).

    ``accelerate launch`` sets ``ACCELERATE_USE_CPU`` only for a single process; without it the Trainer of each of
    N CPU processes would train alone. A DeepSpeed launch is set up by :func:`set_up_deepspeed_on_cpu` instead
    (accelerate drops DeepSpeed under that mark). Must run before ``TrainingArguments`` is built (it sets up the
    device). Returns whether the processes were set up as CPU processes.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.cuda.is_available():
        return False
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes"):
        return set_up_deepspeed_on_cpu()
    os.environ.setdefault("ACCELERATE_USE_CPU", "1")
    return True


def set_up_deepspeed_on_cpu() -> bool:
    """DeepSpeed on CPU processes: its CPU accelerator over gloo, set up before the Trainer (which then reuses it).

    accelerate gives processes without a GPU a communication backend only under its CPU flag, and under that flag it
    drops DeepSpeed; asked for gloo explicitly, it initialises DeepSpeed's communication over gloo and sets up the
    DeepSpeed distributed type. ``TrainingArguments`` would reset that state unless told to use it:
    ``ese_trainer.training.strategy.configured_deepspeed_arguments`` says so. DeepSpeed not installed
    is a ConfigError. The first process of each machine clears a build lock on DeepSpeed's CPU collectives op left
    by a killed run (:mod:`ese_trainer.config.deepspeed_op`), which would otherwise hang every process.
    """
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("the launch asks for deepspeed but DeepSpeed is not installed: pip install "
                          "--no-build-isolation deepspeed (it builds against the installed torch)")
    from accelerate import PartialState

    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        prepare_comm_op()

    PartialState(backend="gloo")
    return True


def use_cpu_cores() -> int:
    """Give each process of a CPU run its share of the cores; returns the torch thread count.

    ``accelerate launch`` sets ``OMP_NUM_THREADS=1`` unless its config says ``use_cpu`` (and a plain ``accelerate
    launch script.py`` on a machine without GPUs does not say so), which leaves all but one core idle. Under
    accelerate (``ACCELERATE_DYNAMO_BACKEND`` is set), on a machine without GPUs and with ``OMP_NUM_THREADS=1``,
    the thread count is raised to ``cores // LOCAL_WORLD_SIZE``; any other setting is left as it is.
    """
    launched_by_accelerate = "ACCELERATE_DYNAMO_BACKEND" in os.environ
    if launched_by_accelerate and os.environ.get("OMP_NUM_THREADS") == "1" and not torch.cuda.is_available():
        share = max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        if share > torch.get_num_threads():
            torch.set_num_threads(share)
            logger.info("CPU run: %d threads per process (accelerate launch set OMP_NUM_THREADS=1)", share)
    return torch.get_num_threads()


def run_cli(run: Callable[[list[str]], object], expected: tuple[type[BaseException], ...]) -> None:
    """Call ``run(sys.argv[1:])``; an expected error prints ``error: …`` and exits 2 (config) or 1 (other)."""
    try:
        mark_cpu_processes()
        use_cpu_cores()
        run(sys.argv[1:])
    except (ConfigError, *expected) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2 if isinstance(error, ConfigError) else 1)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
