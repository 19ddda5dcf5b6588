"""An ESE run's dev score reflects its slices: every trained (layer, dims) slice is scored on STS-B dev in the
evaluation pass, with their mean, and a run can choose its checkpoint by that mean."""

import json

import pytest
from transformers import AutoModel, AutoTokenizer

from ese_trainer.data import load_sts_pairs
from ese_trainer.ese import ESELoss
from ese_trainer.ese.settings import ESESettings
from ese_trainer.evaluation.layer_grid import evaluate_layer_dim_grid
from ese_trainer.evaluation.slice_score import SliceSpearman

from .conftest import EMBEDDED_DATA
from .test_ese_loss import espresso
from .test_recipe import run_recipe

DIAGONAL_L6 = [(1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384)]  # default_diagonal(6, 384)


def test_the_slices_scored_are_the_slices_trained():
    assert ESELoss(ESESettings(schedule="starbucks"), 3, 384).dev_slices == [(1, 128), (2, 256), (3, 384)]
    espresso_cells = ESELoss(espresso(compression_size=128), 3, 384).dev_slices
    assert espresso_cells == [(1, 128), (1, 384), (2, 128), (2, 384), (3, 128), (3, 384)]
    assert ESELoss(espresso(prior_layers_weight=0.0), 3, 384).dev_slices == [(3, 128), (3, 384)]
    with pytest.raises(ValueError, match="at least one"):
        SliceSpearman([], 3)


def test_a_starbucks_run_is_chosen_by_its_slices_and_scores_them_as_the_layer_grid_does(small_dev, tmp_path):
    output_dir = tmp_path / "out"
    result = run_recipe("--config", "configs/smoke_snli.yaml", "--output_dir", str(output_dir),
                        "--sts_data_dir", str(EMBEDDED_DATA), "--sts_dev", str(small_dev), "--sts_tasks", "none",
                        "--suite_before_training", "false", "--eval_on_start", "false", "--max_train_samples", "32",
                        "--per_device_train_batch_size", "16", "--max_steps", "2", "--eval_steps", "1",
                        "--save_steps", "1", "--logging_steps", "1", "--learning_rate", "1e-4",
                        "--ese.enabled", "true", "--ese.schedule", "starbucks",
                        "--metric_for_best_model", "sts_dev_slices_spearman")
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((output_dir / "trainer_state.json").read_text())
    evaluations = {entry["step"]: entry for entry in state["log_history"] if "eval_sts_dev_slices_spearman" in entry}
    assert sorted(evaluations) == [1, 2]
    for entry in evaluations.values():
        slices = [entry[f"eval_sts_dev_slice_{layer}x{dim}_spearman"] for layer, dim in DIAGONAL_L6]
        assert entry["eval_sts_dev_slices_spearman"] == pytest.approx(sum(slices) / len(slices))
        assert entry["eval_sts_dev_slice_6x384_spearman"] == pytest.approx(entry["eval_sts_dev_spearman"], abs=1e-9)
    best_step = max(evaluations, key=lambda step: evaluations[step]["eval_sts_dev_slices_spearman"])
    assert state["best_metric"] == evaluations[best_step]["eval_sts_dev_slices_spearman"]

    # The released model holds the chosen weights: its layer x dims grid on the same pairs gives the logged scores.
    model = AutoModel.from_pretrained(output_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    grid = evaluate_layer_dim_grid(model, tokenizer, {"dev": load_sts_pairs(str(small_dev), name="dev")}, "mean",
                                   "all", sorted({dim for _, dim in DIAGONAL_L6}), show_progress=False)
    for layer, dim in DIAGONAL_L6:
        logged = evaluations[best_step][f"eval_sts_dev_slice_{layer}x{dim}_spearman"]
        assert grid["avg"][str(layer)][str(dim)] == pytest.approx(logged, abs=0.01), (layer, dim)


def test_choosing_by_the_slices_without_ese_is_refused_before_loading(tmp_path):
    result = run_recipe("--config", "configs/smoke_snli.yaml", "--output_dir", str(tmp_path),
                        "--metric_for_best_model", "sts_dev_slices_spearman")
    assert result.returncode == 2
    assert "scores ESE's trained slices: set ese.enabled: true" in result.stderr
    assert not (tmp_path / "trainer_state.json").exists()
