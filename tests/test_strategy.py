"""No silent FSDP/DeepSpeed fallback: what a launch asks for is what runs, or the run stops before loading."""

import json
import os

import pytest
import yaml
from transformers import TrainingArguments

from ese_trainer.config.parsing import ConfigError
from ese_trainer.training.strategy import check_strategy
from tests.conftest import REPO, build_tiny_bert
from tests.test_scale_out import CPU_2PROC, accelerate_launch


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


def _three_steps(config_file, start, output_dir):
    """The recipe for 3 optimizer steps on 2 processes (4 SNLI rows each), no evaluation but STS-B after."""
    result = accelerate_launch(
        str(REPO / "recipes" / "train_nli.py"), "--config", "configs/smoke_snli.yaml", "--model_name_or_path",
        str(start), "--output_dir", str(output_dir), "--max_steps", "3", "--max_train_samples", "40",
        "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--warmup_steps", "0", "--logging_steps", "1",
        "--eval_strategy", "no", "--eval_on_start", "false", "--save_strategy", "no", "--load_best_model_at_end",
        "false", "--sts_tasks", "STSBenchmark", "--suite_before_training", "false", config_file=config_file)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((output_dir / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    return json.loads((output_dir / "run_info.json").read_text())["strategy"], losses


def test_deepspeed_zero2_on_two_cpu_processes_equals_ddp(tmp_path, tokenizer):
    """``deepspeed_zero2.yaml`` on 2 CPU processes (DeepSpeed's CPU accelerator over gloo, fp32, no offload) trains
    through the Trainer's own DeepSpeed path: a DeepSpeedEngine at ZeRO stage 2 over 2 ranks, whose per-step losses
    equal the DDP run's on the same start, batches and seed (3 AdamW steps at lr 1e-3: the updates move them)."""
    config = yaml.safe_load((REPO / "recipes" / "accelerate_configs" / "deepspeed_zero2.yaml").read_text())
    config.update(num_processes=2, mixed_precision="no", main_process_ip="127.0.0.1", main_process_port=29547)
    config_file = tmp_path / "deepspeed_cpu.yaml"
    config_file.write_text(yaml.safe_dump(config))
    start = _tiny_start(tmp_path / "start", tokenizer)
    ddp, ddp_losses = _three_steps(CPU_2PROC, start, tmp_path / "ddp")
    zero2, zero2_losses = _three_steps(config_file, start, tmp_path / "zero2")
    assert zero2 == {"requested": "deepspeed", "strategy": "deepspeed", "distributed_type": "DEEPSPEED",
                     "fsdp": False, "zero_stage": 2, "world_size": 2, "fallback": False,
                     "trained_by": {"wrapper": "DeepSpeedEngine", "zero_stage": 2, "world_size": 2}}
    assert ddp["trained_by"] == {"wrapper": "DistributedDataParallel"}
    assert len(zero2_losses) == len(ddp_losses) == 3 and len(set(ddp_losses)) == 3
    assert zero2_losses == pytest.approx(ddp_losses, rel=1e-5)
