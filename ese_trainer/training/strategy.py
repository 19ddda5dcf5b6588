"""The distributed strategy a launch asks for and the one that actually runs: never a silent FSDP/DeepSpeed fallback.

accelerate attaches FSDP only to GPU-like distributed types and drops DeepSpeed under a CPU flag: an FSDP launch on CPU
processes quietly runs as plain DDP over gloo (``accelerate/state.py``), so a run could claim sharding it never did.
The check below compares the two before anything is loaded. DeepSpeed does run on CPU processes (its CPU accelerator
over gloo) when set up before the Trainer: ``ese_trainer.config.cli.set_up_deepspeed_on_cpu`` and
:func:`configured_deepspeed_arguments`.

The check runs before the Trainer exists, so it reads the launch's ``PartialState`` type, which under a GPU FSDP launch
is still ``MULTI_GPU``: accelerate turns it into ``FSDP`` only later, in ``AcceleratorState.__init__``. The check
applies that rule itself (:func:`accelerator_type`); once the Trainer exists, :func:`confirm_strategy` compares the
prediction with what its accelerator set up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, is_torch_xla_available, parse_flag_from_env
from transformers import TrainingArguments

from ese_trainer.config.parsing import ConfigError

SHARDED = {"fsdp": DistributedType.FSDP, "deepspeed": DistributedType.DEEPSPEED}
# The launch types that accelerate turns into FSDP when FSDP is asked for (accelerate/state.py,
# AcceleratorState.__init__); NO (one process without a launcher), MULTI_CPU and XLA stay as they are.
GPU_LIKE_TYPES = frozenset({
    DistributedType.MULTI_GPU, DistributedType.MULTI_MLU, DistributedType.MULTI_SDAA, DistributedType.MULTI_MUSA,
    DistributedType.MULTI_NPU, DistributedType.MULTI_XPU, DistributedType.MULTI_HPU, DistributedType.MULTI_NEURON,
})


@dataclass
class ScaleOutArguments:
    """How a run may scale out."""

    _argument_group_name = "scale-out"

    allow_strategy_fallback: bool = field(
        default=False,
        metadata={"help": "When the launch asks for FSDP or DeepSpeed but the processes would run as plain DDP (e.g. "
                  "on CPU), go on as DDP, say so and record it, instead of stopping."})


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def _accelerate_flag(name: str) -> bool:
    """``ACCELERATE_USE_FSDP`` / ``ACCELERATE_USE_DEEPSPEED`` as accelerate's state reads them: only ``true``."""
    return os.environ.get(name, "false").lower() == "true"


def on_cpu(training: TrainingArguments) -> bool:
    """Whether accelerate treats the processes as CPU processes (``use_cpu`` or ``ACCELERATE_USE_CPU``)."""
    return bool(training.use_cpu) or parse_flag_from_env("ACCELERATE_USE_CPU")


def requested_strategy(training: TrainingArguments) -> str | None:
    """``fsdp`` or ``deepspeed`` when the accelerate config or the TrainingArguments ask for it, else None."""
    if training.deepspeed or _flag("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if training.fsdp or _flag("ACCELERATE_USE_FSDP"):
        return "fsdp"
    return None


def accelerator_type(launched: DistributedType, cpu: bool, deepspeed: bool, fsdp: bool) -> DistributedType:
    """The distributed type accelerate's ``AcceleratorState`` will run, from the launch's ``PartialState`` type
    (accelerate/state.py, ``AcceleratorState.__init__``): XLA on a TPU stays XLA; DeepSpeed asked for on non-CPU
    processes is DEEPSPEED whatever the launch type; FSDP asked for (``ACCELERATE_USE_FSDP`` or an FSDP plugin, i.e.
    ``TrainingArguments.fsdp``) turns a GPU-like type (:data:`GPU_LIKE_TYPES`) into FSDP; anything else runs as
    launched."""
    if launched == DistributedType.XLA and is_torch_xla_available(check_is_tpu=True):
        return launched
    if deepspeed and not cpu:
        return DistributedType.DEEPSPEED
    if fsdp and launched in GPU_LIKE_TYPES:
        return DistributedType.FSDP
    return launched


def strategy_name(kind: DistributedType, world_size: int) -> str:
    """``fsdp``, ``deepspeed``, ``ddp`` or ``single process``."""
    name = next((key for key, value in SHARDED.items() if value == kind), None)
    return name or ("ddp" if world_size > 1 else "single process")


def running_strategy(training: TrainingArguments) -> dict:
    """What the processes will actually run (:func:`accelerator_type` of the launch's type): distributed type, FSDP
    on or off, ZeRO stage, world size."""
    kind = accelerator_type(training.distributed_state.distributed_type, on_cpu(training),
                            deepspeed=bool(training.deepspeed) or _accelerate_flag("ACCELERATE_USE_DEEPSPEED"),
                            fsdp=bool(training.fsdp) or _accelerate_flag("ACCELERATE_USE_FSDP"))
    zero_stage = None
    if kind == DistributedType.DEEPSPEED:
        hf_config = getattr(training, "hf_deepspeed_config", None)  # set when TrainingArguments.deepspeed names one
        plugin = getattr(training, "deepspeed_plugin", None)  # set by TrainingArguments under a DeepSpeed launch
        zero_stage = (hf_config.config.get("zero_optimization", {}).get("stage", 0) if hf_config is not None
                      else plugin.zero_stage if plugin is not None else None)
    return {"strategy": strategy_name(kind, training.world_size), "distributed_type": str(getattr(kind, "value", kind)),
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
           "ACCELERATE_USE_CPU)" if on_cpu(training)
           else f"accelerate attaches {requested} only to a launch on GPU-like devices through a launcher (this one "
                f"is {training.distributed_state.distributed_type.value}), with ACCELERATE_USE_"
                f"{requested.upper()}=true or the {requested} argument set")
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


def accelerator_record(accelerator: Accelerator) -> dict:
    """What the Trainer's accelerator set up: its distributed type, processes, mixed precision, FSDP version and
    DeepSpeed ZeRO stage (None where not used)."""
    state = accelerator.state
    fsdp_plugin = getattr(state, "fsdp_plugin", None)
    deepspeed_plugin = getattr(state, "deepspeed_plugin", None)
    return {"distributed_type": str(getattr(state.distributed_type, "value", state.distributed_type)),
            "num_processes": accelerator.num_processes, "mixed_precision": str(accelerator.mixed_precision),
            "fsdp_version": getattr(fsdp_plugin, "fsdp_version", None) if fsdp_plugin is not None else None,
            "zero_stage": getattr(deepspeed_plugin, "zero_stage", None) if deepspeed_plugin is not None else None}


def confirm_strategy(strategy: dict, accelerator: Accelerator) -> dict:
    """``strategy`` (:func:`check_strategy`'s record) with ``accelerator``: what the Trainer's accelerator set up
    (:func:`accelerator_record`). An accelerator that runs another strategy than the check expected is a
    :class:`ConfigError` (before training)."""
    record = accelerator_record(accelerator)
    runs = strategy_name(accelerator.state.distributed_type, accelerator.num_processes)
    if runs != strategy["strategy"]:
        raise ConfigError(f"the Trainer's accelerator runs {runs} ({record['distributed_type']}) but the launch check "
                          f"expected {strategy['strategy']} ({strategy['distributed_type']}); not training a run "
                          "that is not what it says")
    return {**strategy, "accelerator": record}


def wrapper_record(model_wrapped: object) -> dict:
    """What trained the model, read from the wrapper the Trainer trained through (``Trainer.model_wrapped``): its
    class, and for a DeepSpeed engine the ZeRO stage and data-parallel world size it ran with."""
    record: dict = {"wrapper": type(model_wrapped).__name__}
    if hasattr(model_wrapped, "zero_optimization_stage"):
        record.update(zero_stage=model_wrapped.zero_optimization_stage(), world_size=model_wrapped.dp_world_size)
    return record
