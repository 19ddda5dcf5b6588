"""No silent FSDP/DeepSpeed fallback: what a launch asks for is what runs, or the run stops before loading; a GPU launch
that asks for FSDP runs as FSDP, as accelerate itself decides."""

import json
import os

import pytest
import torch
import yaml
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DeepSpeedPlugin, DistributedType, TorchDynamoPlugin
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments

from ese_trainer.config.parsing import ConfigError
from ese_trainer.losses.arguments import LossArguments
from ese_trainer.training.fingerprint import FINGERPRINT_FILE
from ese_trainer.training.resume import checkpoint_problem
from ese_trainer.training.run_arguments import check_grad_cache
from ese_trainer.training.strategy import check_strategy
from tests.conftest import REPO, build_tiny_bert
from tests.test_scale_out import accelerate_launch


@pytest.fixture
def cpu_arguments(tmp_path):
    return TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")


@pytest.mark.parametrize("asked", ["FSDP", "DEEPSPEED"])
def test_a_sharded_launch_that_would_not_shard_is_an_error(asked, cpu_arguments, monkeypatch):
    monkeypatch.setenv(f"ACCELERATE_USE_{asked}", "true")
    with pytest.raises(ConfigError, match=rf"asks for {asked.lower()} but the 1 process\(es\) would run single "
                                          r"process.*CPU processes.*allow_strategy_fallback"):
        check_strategy(cpu_arguments, allow_fallback=False)


def test_an_allowed_fallback_is_recorded_and_undoes_the_sharded_setup(cpu_arguments, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    record = check_strategy(cpu_arguments, allow_fallback=True)
    assert record == {"requested": "fsdp", "strategy": "single process", "distributed_type": "NO", "fsdp": False,
                      "zero_stage": None, "world_size": 1, "fallback": True}
    assert "strategy fallback" in capsys.readouterr().out
    assert os.environ["ACCELERATE_USE_FSDP"] == "false" and "FSDP_CPU_RAM_EFFICIENT_LOADING" not in os.environ


def test_a_plain_launch_records_what_runs(cpu_arguments):
    assert check_strategy(cpu_arguments, allow_fallback=False) == {
        "requested": "single process", "strategy": "single process", "distributed_type": "NO", "fsdp": False,
        "zero_stage": None, "world_size": 1, "fallback": False}


def what_accelerate_runs(cpu: bool, asked: str) -> DistributedType:
    """The type accelerate's own ``AcceleratorState`` sets up over the (stubbed) launch state, as the Trainer's
    ``Accelerator`` would; its state is reset afterwards."""
    try:
        state = AcceleratorState(cpu=cpu, dynamo_plugin=TorchDynamoPlugin(), _from_accelerator=True,
                                 deepspeed_plugin=DeepSpeedPlugin() if asked == "DEEPSPEED" else None)
        return state.distributed_type
    finally:
        AcceleratorState._reset_state()


GPU_TYPES = ["MULTI_GPU", "MULTI_NPU", "MULTI_MLU", "MULTI_SDAA", "MULTI_MUSA", "MULTI_XPU", "MULTI_HPU",
             "MULTI_NEURON"]


@pytest.mark.parametrize("launched", list(DistributedType), ids=lambda kind: kind.value)
@pytest.mark.parametrize("asked", ["FSDP", "DEEPSPEED"])
@pytest.mark.parametrize("cpu", [False, True], ids=["accelerator", "cpu"])
def test_the_guard_accepts_exactly_what_accelerate_runs(launched, asked, cpu, tmp_path, monkeypatch):
    """Every distributed type a launch can leave in accelerate's ``PartialState`` (stubbed: a GPU launch's
    ``MULTI_GPU`` on this CPU machine), FSDP or DeepSpeed asked for, on CPU processes or not: the guard accepts the
    launch exactly when accelerate's own ``AcceleratorState`` then runs what was asked, and records that type."""
    training = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    monkeypatch.setitem(PartialState._shared_state, "distributed_type", launched)
    monkeypatch.setenv(f"ACCELERATE_USE_{asked}", "true")
    if cpu:
        monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    runs = what_accelerate_runs(cpu, asked)
    if runs.value == asked:
        record = check_strategy(training, allow_fallback=False)
        assert (record["strategy"], record["distributed_type"]) == (asked.lower(), asked)
    else:
        with pytest.raises(ConfigError, match=rf"asks for {asked.lower()} but"):
            check_strategy(training, allow_fallback=False)
    # accelerate's rule, spelled out: FSDP on the GPU-like types only; DeepSpeed on anything but CPU processes, or
    # where the launch set it up already (as the recipe does on CPU processes: config.cli.set_up_deepspeed_on_cpu).
    expected = (launched.value in [*GPU_TYPES, "FSDP"] if asked == "FSDP"
                else not cpu or launched == DistributedType.DEEPSPEED)
    assert (runs.value == asked) == expected


def test_an_fsdp_launch_on_gpus_runs_as_fsdp(tmp_path, monkeypatch):
    """The GPU launch of ``fsdp.yaml``: accelerate's launcher leaves ``MULTI_GPU`` and ``ACCELERATE_USE_FSDP=true``
    (stubbed here), the guard lets it through as FSDP."""
    training = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    monkeypatch.setitem(PartialState._shared_state, "distributed_type", DistributedType.MULTI_GPU)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert check_strategy(training, allow_fallback=False) == {
        "requested": "fsdp", "strategy": "fsdp", "distributed_type": "FSDP", "fsdp": True, "zero_stage": None,
        "world_size": 1, "fallback": False}


def test_the_fsdp_config_on_cpu_processes_stops_before_loading(tmp_path):
    """``fsdp.yaml`` launched on 2 CPU processes: accelerate would run plain DDP over gloo; the recipe stops with
    what was asked, what would run and why, before loading the model (no output folder)."""
    config = yaml.safe_load((REPO / "recipes" / "accelerate_configs" / "fsdp.yaml").read_text())
    config.update(use_cpu=True, num_processes=2, mixed_precision="no", main_process_ip="127.0.0.1",
                  main_process_port=29541)
    config_file = tmp_path / "fsdp_cpu.yaml"
    config_file.write_text(yaml.safe_dump(config))
    output_dir = tmp_path / "out"
    result = accelerate_launch(str(REPO / "recipes" / "train_nli.py"), "--config", "configs/smoke_snli.yaml",
                               "--output_dir", str(output_dir), config_file=config_file)
    assert result.returncode != 0
    assert "the launch asks for fsdp but the 2 process(es) would run ddp" in result.stderr
    assert "exitcode  : 2" in result.stderr  # the recipe's own clean exit; the traceback is torchrun's report
    assert "train_nli.py\", line" not in result.stderr and "ese_trainer/" not in result.stderr
    assert not (output_dir / "run_info.json").exists()


def _tiny_start(folder, tokenizer):
    """A tiny BERT with the real tokenizer, saved as a start model the recipe loads by path."""
    build_tiny_bert(len(tokenizer), seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _cpu_config(name: str, folder, **changes):
    """``recipes/accelerate_configs/<name>.yaml`` for 2 CPU processes (fp32) on this machine."""
    config = yaml.safe_load((REPO / "recipes" / "accelerate_configs" / f"{name}.yaml").read_text())
    config.update(num_processes=2, mixed_precision="no", main_process_ip="127.0.0.1", **changes)
    config_file = folder / f"{name}_cpu.yaml"
    config_file.write_text(yaml.safe_dump(config))
    return config_file


def _three_steps(config_file, start, output_dir, *extra):
    """The recipe for 3 optimizer steps on 2 processes (4 SNLI rows each), a checkpoint at step 2, no evaluation but
    STS-B after. Returns the launch's result, its strategy record and per-step losses."""
    result = accelerate_launch(
        str(REPO / "recipes" / "train_nli.py"), "--config", "configs/smoke_snli.yaml", "--model_name_or_path",
        str(start), "--output_dir", str(output_dir), "--max_steps", "3", "--max_train_samples", "40",
        "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--warmup_steps", "0", "--logging_steps", "1",
        "--eval_strategy", "no", "--eval_on_start", "false", "--save_strategy", "steps", "--save_steps", "2",
        "--load_best_model_at_end", "false", "--sts_tasks", "STSBenchmark", "--suite_before_training", "false", *extra,
        config_file=config_file)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((output_dir / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    return result, json.loads((output_dir / "run_info.json").read_text())["strategy"], losses


@pytest.fixture(scope="module")
def fallback_run(tmp_path_factory, tokenizer):
    """``fsdp.yaml`` on 2 CPU processes with ``allow_strategy_fallback: true``: trains as DDP."""
    folder = tmp_path_factory.mktemp("fallback")
    start = _tiny_start(folder / "start", tokenizer)
    config_file = _cpu_config("fsdp", folder, use_cpu=True, main_process_port=29543)
    return (start, folder / "out", *_three_steps(config_file, start, folder / "out", "--allow_strategy_fallback",
                                                 "true"))


def test_an_allowed_fsdp_fallback_on_two_cpu_processes_trains_as_ddp_and_records_it(fallback_run):
    """The launch asks for FSDP, the 2 CPU processes run DDP over gloo: the run says so, trains through
    DistributedDataParallel and records ``fallback: true`` with what the Trainer's accelerator set up; its checkpoint
    holds both processes' RNG states, and one missing is named."""
    _, output_dir, result, strategy, losses = fallback_run
    assert "strategy fallback (allow_strategy_fallback): the launch asks for fsdp but the 2 process(es) would run " \
           "ddp" in result.stdout
    assert strategy == {"requested": "fsdp", "strategy": "ddp", "distributed_type": "MULTI_CPU", "fsdp": False,
                        "zero_stage": None, "world_size": 2, "fallback": True,
                        "accelerator": {"distributed_type": "MULTI_CPU", "num_processes": 2, "mixed_precision": "no",
                                        "fsdp_version": None, "zero_stage": None},
                        "trained_by": {"wrapper": "DistributedDataParallel"}}
    assert len(losses) == 3
    checkpoint = output_dir / "checkpoint-2"
    assert checkpoint_problem(checkpoint) is None
    assert json.loads((checkpoint / FINGERPRINT_FILE).read_text())["world_size"] == 2
    (checkpoint / "rng_state_1.pth").unlink()
    assert checkpoint_problem(checkpoint) == "no RNG state (rng_state_<process>.pth) for process(es) [1] of 2"


def test_deepspeed_zero2_on_two_cpu_processes_equals_ddp(fallback_run, tmp_path):
    """``deepspeed_zero2.yaml`` on 2 CPU processes (DeepSpeed's CPU accelerator over gloo, fp32, no offload) trains
    through the Trainer's own DeepSpeed path: a DeepSpeedEngine at ZeRO stage 2 over 2 ranks, whose per-step losses
    and trained weights equal the DDP run's (the FSDP launch above that fell back to DDP) on the same start, batches
    and seed (3 AdamW steps at lr 1e-3: the updates move them). Its checkpoint, in DeepSpeed's layout, is complete;
    a rank's optimizer shard missing is named."""
    start, ddp_dir, _, _, ddp_losses = fallback_run
    config_file = _cpu_config("deepspeed_zero2", tmp_path, main_process_port=29547)
    _, zero2, zero2_losses = _three_steps(config_file, start, tmp_path / "zero2")
    assert zero2 == {"requested": "deepspeed", "strategy": "deepspeed", "distributed_type": "DEEPSPEED",
                     "fsdp": False, "zero_stage": 2, "world_size": 2, "fallback": False,
                     "accelerator": {"distributed_type": "DEEPSPEED", "num_processes": 2, "mixed_precision": "no",
                                     "fsdp_version": None, "zero_stage": 2},
                     "trained_by": {"wrapper": "DeepSpeedEngine", "zero_stage": 2, "world_size": 2}}
    assert len(zero2_losses) == len(ddp_losses) == 3 and len(set(ddp_losses)) == 3
    assert zero2_losses == pytest.approx(ddp_losses, rel=1e-5)
    ddp_weights, zero2_weights = (load_file(folder / "model.safetensors") for folder in (ddp_dir, tmp_path / "zero2"))
    start_weights = load_file(start / "model.safetensors")
    assert set(zero2_weights) == set(ddp_weights)
    for name, weight in ddp_weights.items():
        torch.testing.assert_close(zero2_weights[name], weight, rtol=1e-4, atol=1e-6, msg=name)
    assert max((ddp_weights[name] - start_weights[name]).abs().max().item() for name in start_weights) > 1e-3
    checkpoint = tmp_path / "zero2" / "checkpoint-2"
    assert (checkpoint / "latest").is_file() and checkpoint_problem(checkpoint) is None
    [shard] = (checkpoint / "global_step2").glob("*zero_pp_rank_1_*optim_states.pt")
    shard.unlink()
    assert checkpoint_problem(checkpoint) == ("no DeepSpeed optimizer shard in global_step2/ for process(es) [1] of "
                                              "2")


def test_grad_cache_under_fsdp_is_refused(tmp_path, monkeypatch):
    """GradCache's several backward passes per step cannot run on FSDP's sharded gradients: the strategy the GPU
    launch state (stubbed as above) will run refuses it, in one line."""
    training = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    monkeypatch.setitem(PartialState._shared_state, "distributed_type", DistributedType.MULTI_GPU)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    strategy = check_strategy(training, allow_fallback=False)
    check_grad_cache(LossArguments(), strategy)  # GradCache off: nothing to refuse
    with pytest.raises(ConfigError, match=r"^ibn_cache \(GradCache\) runs on one process or under DDP, not under "
                                          r"fsdp: set ibn_cache: false, or launch with DDP [^\n]*$"):
        check_grad_cache(LossArguments(ibn_cache=True), strategy)


def test_grad_cache_under_deepspeed_stops_before_loading(tmp_path):
    """``deepspeed_zero2.yaml`` on 2 CPU processes (a real DeepSpeed state) with ``ibn_cache: true``: exit 2 with one
    line, before the model or the data load (no output folder)."""
    output_dir = tmp_path / "out"
    result = accelerate_launch(str(REPO / "recipes" / "train_nli.py"), "--config", "configs/smoke_snli.yaml",
                               "--output_dir", str(output_dir), "--ibn_cache", "true",
                               config_file=_cpu_config("deepspeed_zero2", tmp_path, main_process_port=29549))
    assert "error: ibn_cache (GradCache) runs on one process or under DDP, not under deepspeed" in result.stderr
    assert "exitcode  : 2" in result.stderr and "ese_trainer/" not in result.stderr
    assert not output_dir.exists()


def test_the_trainers_accelerator_must_run_what_the_check_expected(tmp_path):
    """After the Trainer exists its accelerator is compared with the check: the same strategy is recorded with what
    the accelerator set up; another one stops the run before training."""
    from ese_trainer.training.strategy import confirm_strategy

    training = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    checked = check_strategy(training, allow_fallback=False)
    accelerator = Trainer(model=torch.nn.Linear(2, 2), args=training).accelerator
    assert confirm_strategy(checked, accelerator)["accelerator"] == {
        "distributed_type": "NO", "num_processes": 1, "mixed_precision": "no", "fsdp_version": None,
        "zero_stage": None}
    with pytest.raises(ConfigError, match=r"the Trainer's accelerator runs single process \(NO\) but the launch check "
                                          r"expected fsdp \(FSDP\)"):
        confirm_strategy({**checked, "strategy": "fsdp", "distributed_type": "FSDP"}, accelerator)
