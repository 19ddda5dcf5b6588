"""The distributed strategy a launch asks for and the one that actually runs: never a silent FSDP/DeepSpeed fallback.

accelerate attaches FSDP only to GPU-like distributed types and drops DeepSpeed under a CPU flag: an FSDP launch on CPU
processes quietly runs as plain DDP over gloo (``accelerate/state.py``), so a run could claim sharding it never did.
The check below compares the two before anything is loaded. DeepSpeed does run on CPU processes (its CPU accelerator
over gloo) when set up before the Trainer: ``ese_trainer.config.cli.set_up_deepspeed_on_cpu`` and
:func:`configured_deepspeed_arguments`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from accelerate import PartialState
from accelerate.utils import DistributedType
from transformers import TrainingArguments

from ese_trainer.config.parsing import ConfigError

SHARDED = {"fsdp": DistributedType.FSDP, "deepspeed": DistributedType.DEEPSPEED}


@dataclass
class ScaleOutArguments:
    """How a run may scale out."""

    _argument_group_name = "scale-out"

    allow_strategy_fallback: bool = field(
        default=False,
        metadata={"help": "When the launch asks for FSDP or DeepSpeed but the processes would run as plain DDP (e.g. "
                  "on CPU), go on as DDP, say so and record it, instead of stopping."})
    # What runs, filled in by the checks (run_info.json records it): not a setting.
    strategy: dict = field(default_factory=dict, init=False)


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def requested_strategy(training: TrainingArguments) -> str | None:
    """``fsdp`` or ``deepspeed`` when the accelerate config or the TrainingArguments ask for it, else None."""
    if training.deepspeed or _flag("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if training.fsdp or _flag("ACCELERATE_USE_FSDP"):
        return "fsdp"
    return None


def running_strategy(training: TrainingArguments) -> dict:
    """What the processes will actually run: distributed type, FSDP on or off, ZeRO stage, world size."""
    kind = training.distributed_state.distributed_type
    zero_stage = None
    if kind == DistributedType.DEEPSPEED:
        hf_config = getattr(training, "hf_deepspeed_config", None)  # set when TrainingArguments.deepspeed names one
        zero_stage = (hf_config.config.get("zero_optimization", {}).get("stage", 0) if hf_config is not None
                      else training.deepspeed_plugin.zero_stage)
    name = next((key for key, value in SHARDED.items() if value == kind), None)
    if name is None:
        name = "ddp" if training.world_size > 1 else "single process"
    return {"strategy": name, "distributed_type": str(getattr(kind, "value", kind)),
            "fsdp": kind == DistributedType.FSDP, "zero_stage": zero_stage, "world_size": training.world_size}


def configured_deepspeed_arguments() -> list[str]:
    """The TrainingArguments that make the Trainer reuse a DeepSpeed state the entry point set up on CPU processes
    (:func:`ese_trainer.config.cli.set_up_deepspeed_on_cpu`) instead of resetting it to one without a backend, i.e.
    a single process; none otherwise. TrainingArguments set up their device as they are built, so these go on the
    command line."""
    if not PartialState._shared_state or PartialState().distributed_type != DistributedType.DEEPSPEED:
        return []
    return ["--accelerator_config", '{"use_configured_state": true}']


def check_strategy(training: TrainingArguments, allow_fallback: bool) -> dict:
    """The running strategy (:func:`running_strategy`) with what was requested; a requested FSDP or DeepSpeed that
    would not run is a :class:`ConfigError` naming both and why, unless ``allow_fallback`` (then printed, and
    recorded as a fallback)."""
    requested = requested_strategy(training)
    running = running_strategy(training)
    record = {"requested": requested or running["strategy"], **running, "fallback": False}
    if requested is None or running["strategy"] == requested:
        return record
    why = ("accelerate attaches FSDP and DeepSpeed only to GPU-like devices, and these are CPU processes (use_cpu / "
           "ACCELERATE_USE_CPU)" if training.use_cpu or _flag("ACCELERATE_USE_CPU")
           else "the launch's distributed type does not carry it")
    message = (f"the launch asks for {requested} but the {running['world_size']} process(es) would run "
               f"{running['strategy']} ({running['distributed_type']}): {why}")
    if not allow_fallback:
        raise ConfigError(f"{message}. Launch on GPUs for {requested}, or set allow_strategy_fallback: true to train "
                          f"as {running['strategy']} and record it.")
    print(f"strategy fallback (allow_strategy_fallback): {message}; training as {running['strategy']}", flush=True)
    # What the launch set up for the sharded strategy must not half-apply: transformers would load the weights of
    # every process but the first on the meta device (FSDP's RAM-efficient loading) and never fill them in.
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        os.environ[name] = "false"
    os.environ.pop("FSDP_CPU_RAM_EFFICIENT_LOADING", None)
    return {**record, "fallback": True}


def wrapper_record(model_wrapped: object) -> dict:
    """What trained the model, read from the wrapper the Trainer trained through (``Trainer.model_wrapped``): its
    class, and for a DeepSpeed engine the ZeRO stage and data-parallel world size it ran with."""
    record: dict = {"wrapper": type(model_wrapped).__name__}
    if hasattr(model_wrapped, "zero_optimization_stage"):
        record.update(zero_stage=model_wrapped.zero_optimization_stage(), world_size=model_wrapped.dp_world_size)
    return record
