"""No silent FSDP/DeepSpeed fallback: what a launch asks for is what runs, or the run stops before loading."""

import os

import pytest
import yaml
from transformers import TrainingArguments

from ese_trainer.config.parsing import ConfigError
from ese_trainer.training.strategy import check_strategy
from tests.conftest import REPO
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
