"""Global-batch negatives: 2 gloo processes with gathering, and GradCache, each equal one full batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
from sentence_transformers import SentenceTransformer

from ese_trainer.training.grad_cache import RandomState
from tests.conftest import REPO
from tests.scale_out_common import ROWS_PER_PROCESS, one_sgd_step

CPU_2PROC = REPO / "recipes" / "accelerate_configs" / "cpu_2proc.yaml"


def accelerate_launch(*args, timeout=600):
    """``accelerate launch --config_file cpu_2proc.yaml ...`` as the README writes it: no ACCELERATE_USE_CPU."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("ACCELERATE_USE_CPU", None)
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_2PROC),
                           *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def assert_same_step(result, reference, tolerance=1e-5, relative=False):
    """Same logged loss, and every parameter's change within ``tolerance`` plus 1e-4 of the largest change of that
    parameter (float32 sums in another order differ in proportion to their size: the token-type embedding's
    gradient sums over every token); with ``relative`` ``tolerance`` itself scales with changes above 1 (steps whose
    gradients are large, e.g. an MoE encoder's router terms)."""
    assert result["loss"] == pytest.approx(reference["loss"], abs=1e-4)
    for name, delta in reference["deltas"].items():
        difference = (result["deltas"][name] - delta).abs().max().item()
        largest = delta.abs().max().item()
        bound = (tolerance * max(1.0, largest) if relative else tolerance) + 1e-4 * largest
        assert difference < bound, f"{name}: {difference} (largest change {largest})"


@pytest.fixture(scope="module")
def full_batch_step():
    """One process holding the whole global batch (2 x ROWS_PER_PROCESS pairs)."""
    return one_sgd_step(per_device_rows=2 * ROWS_PER_PROCESS)


def test_two_processes_with_gathering_equal_one_full_batch(full_batch_step, tmp_path):
    outputs = {}
    for mode in ("gather", "cached", "local"):
        result = accelerate_launch(str(REPO / "tests" / "scale_out_worker.py"), str(tmp_path / mode), mode)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[mode] = torch.load(tmp_path / mode)
    assert outputs["gather"]["world_size"] == 2
    assert_same_step(outputs["gather"], full_batch_step)
    # GradCache's unsynchronised passes, averaged by hand over the processes: the same step again.
    assert_same_step(outputs["cached"], full_batch_step)
    # Without gathering each process only sees its own pairs as negatives: a different step.
    with pytest.raises(AssertionError):
        assert_same_step(outputs["local"], full_batch_step)


@pytest.mark.parametrize("minibatch", [4, 5])  # texts per mini-batch: the rows' texts cut at any point
def test_grad_cache_equals_full_batch(full_batch_step, minibatch):
    cached = one_sgd_step(per_device_rows=2 * ROWS_PER_PROCESS, ibn_cache=True, cache_minibatch_texts=minibatch)
    assert_same_step(cached, full_batch_step)
    assert {"loss_cosent", "loss_ibn", "loss_angle"} <= set(cached["log"])


@pytest.mark.parametrize("model_kind,ese", [
    ("moe", None),  # router terms over every token of the batch
    ("dense", {"compression_target": "pca"}),  # layer terms, PCA target of the whole batch
    ("dense", {"compression_target": "moe", "head_expert_hidden": 16}),  # ESE's learned heads train too
])
def test_grad_cache_covers_the_whole_objective(model_kind, ese):
    full = one_sgd_step(2 * ROWS_PER_PROCESS, model_kind, ese)
    cached = one_sgd_step(2 * ROWS_PER_PROCESS, model_kind, ese, ibn_cache=True, cache_minibatch_texts=5)
    assert_same_step(cached, full, relative=True)
    heads = [name for name in full["deltas"] if name.startswith("objective.")]
    if ese and ese["compression_target"] == "moe":
        assert heads and any(full["deltas"][name].abs().sum() > 0 for name in heads)
    expected_terms = {"loss_router_aux"} if model_kind == "moe" else {"loss_ese", "loss_ese_prior"}
    assert expected_terms <= set(cached["log"])


def test_random_state_replays_dropout():
    dropout = torch.nn.Dropout(0.5)
    x = torch.ones(1000)
    state = RandomState(x)
    first = dropout(x)
    dropout(x)  # the generator moves on
    with state.restored():
        replay = dropout(x)
    assert torch.equal(first, replay)


def test_moe_recipe_under_accelerate_launch_two_processes(tmp_path):
    """The recipe with an MoE encoder under DDP (2 gloo processes, find_unused_parameters off: every expert is
    in every graph), gathering across processes; the saved folder loads through sentence-transformers."""
    output_dir = tmp_path / "out"
    result = accelerate_launch(
        str(REPO / "recipes" / "train_nli.py"), "--config", "configs/moe_smoke.yaml", "--output_dir", str(output_dir),
        "--max_steps", "5", "--max_train_samples", "80", "--per_device_train_batch_size", "8",
        "--moe.num_experts", "8", "--moe.num_experts_per_tok", "1", "--moe.layers", "every_2",
        "--gather_across_devices", "true", "--sts_tasks", "STSBenchmark",
        "--eval_on_start", "false", "--logging_steps", "1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("STS (cosine Spearman") == 1  # evaluated and reported once, by the main process
    info = json.loads((output_dir / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["global_train_batch_size"] == 16
    assert info["model_type"] == "ese_moe_bert"
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 5
    train_logs = [entry for entry in state["log_history"] if "loss" in entry]
    assert all({"loss_ibn", "loss_router_aux", "loss_router_z"} <= set(entry) for entry in train_logs)
    utilisation = json.loads((output_dir / "expert_utilisation.json").read_text())
    assert set(utilisation["final"]["layers"]) == {"1", "3", "5"}
    for layer in utilisation["final"]["layers"].values():
        assert len(layer["shares"]) == 8 and abs(sum(layer["shares"]) - 1) < 1e-3
    assert (output_dir / "expert_utilisation.png").stat().st_size > 10_000
    assert set(json.loads((output_dir / "eval_results.json").read_text())) >= {"before", "after"}
    model = SentenceTransformer(str(output_dir), trust_remote_code=True, device="cpu")
    assert type(model[0].auto_model).__name__ == "MoEBertModel"
    card = (output_dir / "README.md").read_text()
    assert "## Mixture of Experts" in card and "trust_remote_code=True" in card and "| moe.num_experts | 8 |" in card
    shares = utilisation["final"]["layers"]["3"]["shares"]
    assert "| 3 | " + " | ".join(f"{share:.3f}" for share in shares) in card
    assert "Switch Transformers" in card and "ESE" not in card.split("## Citation")[1]
