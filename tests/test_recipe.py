"""The recipe end to end on the real model and real data: outputs, ST round trip, resume, errors."""

import json
import os
import subprocess
import sys

import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

from ese_trainer.evaluation.sts import encode

from .conftest import EMBEDDED_DATA, REPO, SMALL_STS_PAIRS

SMALL_RUN = ["--max_train_samples", "32", "--per_device_train_batch_size", "16", "--max_steps", "4",
             "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "1", "--sts_tasks", "STSBenchmark"]


def run_recipe(*args, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, str(REPO / "recipes" / "train_nli.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, small_dev):
    """4 steps, checkpoints chosen on 100 STS-B dev pairs, the whole STS-B test set before and after."""
    output_dir = tmp_path_factory.mktemp("run") / "out"
    result = run_recipe("--config", "configs/smoke_snli.yaml", "--output_dir", str(output_dir),
                        "--sts_data_dir", str(EMBEDDED_DATA), "--sts_dev", str(small_dev), *SMALL_RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, result


def test_outputs(finished_run):
    output_dir, result = finished_run
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert set(results["before"]) == set(results["after"]) == {"STSBenchmark"}
    assert round(results["before"]["STSBenchmark"], 2) == 82.03
    assert "| before | 82.03 |" in (output_dir / "eval_results.md").read_text()
    assert "| before | 82.03 |" in result.stdout
    counts = json.loads((output_dir / "data_counts.json").read_text())
    [source] = counts["sources"]
    assert source["nli"]["kept"] == 9842 and source["rows_built"] == 3574 and source["rows_used"] == 32
    assert counts["sts_dev_pairs"] == SMALL_STS_PAIRS
    state = json.loads((output_dir / "trainer_state.json").read_text())
    evaluations = [entry for entry in state["log_history"] if "eval_sts_dev_spearman" in entry]
    assert [entry["step"] for entry in evaluations] == [0, 2, 4]  # eval_on_start scores the base model
    assert state["best_metric"] == max(entry["eval_sts_dev_spearman"] for entry in evaluations[1:])
    train_logs = [entry for entry in state["log_history"] if "loss" in entry]
    assert train_logs and all({"loss_cosent", "loss_ibn", "loss_angle"} <= set(entry) for entry in train_logs)
    for entry in train_logs:  # the logged loss is the weighted sum of the logged terms (all weights 1 here)
        assert entry["loss"] == pytest.approx(entry["loss_cosent"] + entry["loss_ibn"] + entry["loss_angle"], abs=2e-4)
    assert (output_dir / "loss_curves.png").stat().st_size > 10_000
    assert "learning_rate" in (output_dir / "resolved_config.yaml").read_text()
    strategy = json.loads((output_dir / "run_info.json").read_text())["strategy"]
    assert strategy == {"requested": "single process", "strategy": "single process", "distributed_type": "NO",
                        "fsdp": False, "zero_stage": None, "world_size": 1, "fallback": False,
                        "accelerator": {"distributed_type": "NO", "num_processes": 1, "mixed_precision": "no",
                                        "fsdp_version": None, "zero_stage": None},
                        "trained_by": {"wrapper": "TrainingModel"}}


def test_saved_model_round_trips_through_sentence_transformers(finished_run):
    output_dir, _ = finished_run
    sentences = ["A man is playing a guitar.", "Two dogs run through a field of tall grass.", "It is raining."]
    theirs = SentenceTransformer(str(output_dir), device="cpu").encode(sentences, convert_to_tensor=True)
    model = AutoModel.from_pretrained(output_dir).eval()
    ours = encode(model, AutoTokenizer.from_pretrained(output_dir), sentences, "mean", show_progress=False)
    assert torch.nn.functional.cosine_similarity(ours, theirs.cpu()).min() > 0.99999


def test_resume_from_a_checkpoint_broken_mid_save_names_it(finished_run, tmp_path):
    """A checkpoint whose weights were cut off by a crash mid-save: a clean error naming it, never a traceback."""
    import shutil

    output_dir, _ = finished_run
    newest = max(output_dir.glob("checkpoint-*"), key=lambda folder: int(folder.name.split("-")[1]))
    broken = tmp_path / newest.name
    shutil.copytree(newest, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    result = run_recipe("--config", "configs/smoke_snli.yaml", "--output_dir", str(tmp_path / "out"),
                        "--sts_data_dir", str(EMBEDDED_DATA), *SMALL_RUN, "--resume_from_checkpoint", str(broken))
    assert result.returncode == 2
    assert f"{broken} cannot be resumed from: model.safetensors is unreadable" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_key_fails_before_loading_anything():
    result = run_recipe("--config", "configs/smoke_snli.yaml", "--cosent_weight", "1")
    assert result.returncode == 2
    assert "unknown key(s) 'cosent_weight' (did you mean 'cosent_w'?)" in result.stderr


def test_threshold_above_every_label_score_is_refused(tmp_path):
    result = run_recipe("--config", "configs/smoke_snli.yaml", "--label_map", '{"entailment": 0.9, "neutral": 0.4}',
                        "--output_dir", str(tmp_path))
    assert result.returncode == 2 and "positive_min_score=1.0 is above every label_map score" in result.stderr


def test_missing_model_path_is_named(tmp_path):
    result = run_recipe("--config", "configs/smoke_snli.yaml", "--model_name_or_path", "./models/missing",
                        "--output_dir", str(tmp_path))
    assert result.returncode == 1
    assert "error: model path './models/missing' does not exist" in result.stderr


def test_model_card_renders_the_runs_numbers(finished_run):
    from huggingface_hub import ModelCard

    output_dir, _ = finished_run
    card = ModelCard.load(output_dir / "README.md")
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.library_name == "sentence-transformers"
    [result] = card.data.eval_results
    assert (result.dataset_name, result.metric_value) == ("STSBenchmark", round(results["after"]["STSBenchmark"], 2))
    table = (output_dir / "eval_results.md").read_text().split("\n\n", 1)[1].strip()
    assert table in card.text  # the same before/after table as eval_results.md
    assert "entailment → 1.0, neutral → 0.5, contradiction → 0.0" in card.text
    assert "| in-batch negatives (InfoNCE over positives and hard negatives) | 1.0 | 20.0 |" in card.text
    assert "@inproceedings{li-li-2024-aoe" in card.text
    assert "| `data/SNLI[dev]` | nli | 9842 | 9842 | 3574 | 32 | " in card.text and "| 0 / 0 / 0 |" in card.text
    assert card.data.datasets == ["stanfordnlp/snli"]
    # a plain run cites what it used: no ESE or MoE sections or citations
    assert "li2025ese" not in card.text and "## Mixture of Experts" not in card.text and "## Espresso" not in card.text
