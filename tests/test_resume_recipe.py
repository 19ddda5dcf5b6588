"""Interrupt the recipe's command line, resume it through the command line: the weights equal an uninterrupted run's
(a dense encoder with gradient accumulation and GradCache; an MoE encoder with ESE's learned target heads, each part
at a learning rate of its own), and ``run_info.json`` keeps the interrupted run's record. A resume on changed data or
settings stops before loading, naming the change, or (``resume_despite_changes``) goes on and records it.

The runs are tiny (a 2-layer BERT with the real tokenizer, dropout 0.1, 4 steps of 8 SNLI rows) and the interruption
is a SIGKILL at the end of step 3, after ``checkpoint-2``: the resumed run redoes step 3 from the checkpoint.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from .conftest import EMBEDDED_DATA, REPO, build_tiny_bert

RUN = ["--config", "configs/smoke_snli.yaml", "--max_steps", "4", "--max_train_samples", "64",
       "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--warmup_steps", "1", "--logging_steps", "1",
       "--eval_strategy", "no", "--eval_on_start", "false", "--save_strategy", "steps", "--save_steps", "2",
       "--load_best_model_at_end", "false", "--sts_tasks", "none", "--suite_before_training", "false"]
CASES = {
    "dense-accumulation-gradcache": ["--gradient_accumulation_steps", "2", "--ibn_cache", "true",
                                     "--cache_minibatch_texts", "10"],
    "moe-ese": ["--moe.enabled", "true", "--moe.num_experts", "4", "--moe.num_experts_per_tok", "2",
                "--moe.router_learning_rate", "1e-3", "--ese.enabled", "true", "--ese.schedule", "espresso",
                "--ese.compression_size", "8", "--ese.compression_target", "moe", "--ese.head_expert_hidden", "16"],
}
KILL_AT = 3


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, script, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def recipe(*args: str) -> subprocess.CompletedProcess:
    return _run(str(REPO / "recipes" / "train_nli.py"), *args)


def _resume_case(name: str, folder, tokenizer) -> dict:
    """An uninterrupted run; the same run killed at the end of step 3; that run resumed with ``last``."""
    start = folder / "start"
    build_tiny_bert(len(tokenizer), seed=0, dropout=0.1).save_pretrained(start)
    tokenizer.save_pretrained(start)
    data = shutil.copytree(EMBEDDED_DATA / "SNLI", folder / "SNLI")
    arguments = [*RUN, *CASES[name], "--model_name_or_path", str(start), "--train_dataset", str(data)]
    straight = recipe(*arguments, "--output_dir", str(folder / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _run(str(REPO / "tests" / "interrupted_recipe.py"), str(KILL_AT), *arguments, "--output_dir",
                  str(folder / "run"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(path.name for path in (folder / "run").glob("checkpoint-*")) == ["checkpoint-2"]
    info_before = json.loads((folder / "run" / "run_info.json").read_text())
    resumed = recipe(*arguments, "--output_dir", str(folder / "run"), "--resume_from_checkpoint", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"straight": folder / "straight", "run": folder / "run", "data": data, "arguments": arguments,
            "info_before": info_before}


@pytest.fixture(scope="module")
def dense_case(tmp_path_factory, tokenizer):
    return _resume_case("dense-accumulation-gradcache", tmp_path_factory.mktemp("dense"), tokenizer)


@pytest.fixture(scope="module")
def moe_case(tmp_path_factory, tokenizer):
    return _resume_case("moe-ese", tmp_path_factory.mktemp("moe"), tokenizer)


def assert_same_tensors(path, expected_path):
    weights, expected = load_file(path), load_file(expected_path)
    assert set(weights) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-5, atol=1e-6, msg=f"{path}: {name}")


@pytest.mark.parametrize("case", ["dense_case", "moe_case"])
def test_a_killed_run_resumed_through_the_cli_equals_the_uninterrupted_run(case, request):
    """The whole training model at step 4 (encoder, and the ESE heads and their optimizer-visible state) and the
    released encoder equal the uninterrupted run's; steps 3 and 4 did move the weights."""
    run, straight = request.getfixturevalue(case)["run"], request.getfixturevalue(case)["straight"]
    assert_same_tensors(run / "checkpoint-4" / "model.safetensors", straight / "checkpoint-4" / "model.safetensors")
    assert_same_tensors(run / "model.safetensors", straight / "model.safetensors")
    at_2, at_4 = (load_file(run / f"checkpoint-{step}" / "model.safetensors") for step in (2, 4))
    assert max((at_4[name] - at_2[name]).abs().max().item() for name in at_4) > 1e-4
    state = json.loads((run / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4]
    if case == "moe_case":
        assert any(name.startswith("objective.ese_loss.heads.") for name in at_4)


def test_the_resumed_run_keeps_the_interrupted_runs_record(dense_case):
    """``run_info.json`` says where the run resumed (no change) and keeps the interrupted run's own record: its
    run_info, resolved config and data counts."""
    run = dense_case["run"]
    info = json.loads((run / "run_info.json").read_text())
    assert info["resumed_from"] == {"checkpoint": str(run / "checkpoint-2"), "global_step": 2, "changes": {}}
    [earlier] = info["earlier_runs"]
    assert earlier["run_info"] == dense_case["info_before"] and "resumed_from" not in earlier["run_info"]
    assert earlier["run_info"]["fingerprint"] == info["fingerprint"]
    assert earlier["resolved_config"]["gradient_accumulation_steps"] == 2 and earlier["resolved_config"]["ibn_cache"]
    assert earlier["data_counts"]["train_rows"] == 64 and earlier["data_counts"]["relaxed_batches"] == [0]
    fingerprint = json.loads((run / "checkpoint-4" / "run_fingerprint.json").read_text())
    assert fingerprint == info["fingerprint"] and fingerprint["gradient_accumulation_steps"] == 2


def test_a_resume_on_changed_inputs_stops_naming_them_or_goes_on_recorded(dense_case):
    """Another per-device batch, then an edited data file: each stops with exit 2 before loading, naming the
    checkpoint and the change, no traceback; with ``resume_despite_changes`` the run goes on and records the change."""
    run, data, arguments = dense_case["run"], dense_case["data"], dense_case["arguments"]
    info_before = (run / "run_info.json").read_text()
    resume = [*arguments, "--output_dir", str(run), "--resume_from_checkpoint", "last"]
    batch = recipe(*resume, "--per_device_train_batch_size", "4")
    assert batch.returncode == 2 and "Traceback" not in batch.stderr
    assert (f"error: resume_from_checkpoint: {run / 'checkpoint-4'} was trained on other data or settings than this "
            "run: per_device_train_batch_size 8 -> 4. ") in batch.stderr
    labels = data / "labels.dev"
    original = labels.read_bytes()
    try:
        labels.write_bytes(original.replace(b"neutral", b"Neutral", 1))
        edited = recipe(*resume)
        assert edited.returncode == 2 and "Traceback" not in edited.stderr
        assert "sources[0].files['labels.dev'].sha256" in edited.stderr
        assert (run / "run_info.json").read_text() == info_before  # stopped before writing anything
        allowed = recipe(*resume, "--resume_despite_changes", "true")
    finally:
        labels.write_bytes(original)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "resume_despite_changes: resuming from" in allowed.stderr
    info = json.loads((run / "run_info.json").read_text())
    assert info["resumed_from"]["checkpoint"] == str(run / "checkpoint-4")
    assert list(info["resumed_from"]["changes"]) == ["sources[0].files['labels.dev'].sha256"]
    assert len(info["earlier_runs"]) == 2 and info["earlier_runs"][1]["run_info"]["resumed_from"]["global_step"] == 2
