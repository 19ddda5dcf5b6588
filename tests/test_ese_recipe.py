"""The recipe with ESE on the real model and data: the terms are logged, the grid and the card are written."""

import json

from .conftest import small_sts_args
from .test_recipe import REPO, run_recipe

ESE_RUN = ["--max_train_samples", "64", "--per_device_train_batch_size", "16", "--max_steps", "3",
           "--eval_strategy", "no", "--eval_on_start", "false", "--load_best_model_at_end", "false",
           "--save_strategy", "no", "--logging_steps", "1"]


def test_ese_run_logs_its_terms_and_writes_the_grid(small_sts, tmp_path):
    output_dir = tmp_path / "out"
    result = run_recipe("--config", "configs/ese_smoke.yaml", "--output_dir", str(output_dir),
                        *small_sts_args(small_sts), "--ese.starbucks_distill_weight", "0.5", *ESE_RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((output_dir / "trainer_state.json").read_text())
    train_logs = [entry for entry in state["log_history"] if "loss" in entry]
    assert all({"loss_cosent", "loss_ese", "loss_ese_starbucks", "loss_ese_starbucks_distill"} <= set(entry)
               for entry in train_logs)
    grid = json.loads((output_dir / "ese_grid.json").read_text())
    # The default diagonal of all-MiniLM-L6-v2, (1, 16) ... (5, 256) (6, 384), and half the width.
    assert grid["layers"] == [1, 2, 3, 4, 5, 6] and grid["dims"] == [16, 32, 64, 128, 192, 256, 384]
    after = json.loads((output_dir / "eval_results.json").read_text())["after"]["STSBenchmark"]
    assert abs(grid["tasks"]["STSBenchmark"]["6"]["384"] - after) < 0.01  # the full cell is the released model
    assert grid["tasks"]["STSBenchmark"]["1"]["16"] < grid["tasks"]["STSBenchmark"]["6"]["384"]
    assert (output_dir / "ese_grid.png").stat().st_size > 10_000
    card = (output_dir / "README.md").read_text()
    assert "## Espresso Sentence Embeddings (ESE)" in card and "(Starbucks)" in card
    assert "| ese.schedule | starbucks |" in card and "| ese.starbucks_distill_weight | 0.5 |" in card
    assert "ese.compression_size" not in card  # the other schedule's settings are not the run's
    assert (output_dir / "ese_grid.md").read_text().strip() in card
    assert "Espresso Sentence Embeddings" in card.split("## Citation")[1]
    assert set(grid["encode_seconds"]) == {"1", "2", "3", "4", "5", "6"}  # the model cut to each depth, timed
    assert "- within 1 point(s) of the full model" in card and "- within 2 point(s)" in card


def test_size_recommendation_picks_the_fewest_layers_then_dims():
    from ese_trainer.evaluation.layer_grid import recommend_sizes

    grid = {"layers": [1, 2, 3], "dims": [64, 128],
            "avg": {"1": {"64": 70.0, "128": 78.5}, "2": {"64": 79.2, "128": 79.6}, "3": {"64": 79.0, "128": 80.0}},
            "encode_seconds": {"1": 1.0, "2": 2.0, "3": 3.0}}
    within_one, within_two = recommend_sizes(grid)
    assert (within_one["layer"], within_one["dim"], within_one["encode_speed_up"]) == (2, 64, 1.5)
    assert (within_two["layer"], within_two["dim"], within_two["encode_speed_up"]) == (1, 128, 3.0)


def test_compression_size_not_below_hidden_size_is_refused_before_training(tmp_path):
    result = run_recipe("--config", "configs/ese_smoke.yaml", "--output_dir", str(tmp_path),
                        "--ese.schedule", "espresso", "--ese.compression_size", "384")
    assert result.returncode == 2
    assert "ese.compression_size=384 must be in 1..383" in result.stderr
    assert not (tmp_path / "trainer_state.json").exists()


def test_an_espresso_config_without_its_schedule_is_refused_before_training(tmp_path):
    """Configs written when Espresso was the default set its keys without ``schedule``: they must not train
    Starbucks unnoticed."""
    config = tmp_path / "espresso.yaml"
    text = (REPO / "configs" / "ese_smoke.yaml").read_text()
    espresso_keys = "  enabled: true\n  compression_size: 128\n  layer_weighting: log"
    config.write_text(text.replace("  enabled: true", espresso_keys, 1))
    result = run_recipe("--config", str(config), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert (f"{config}: ese.compression_size, ese.layer_weighting apply to schedule espresso only, and the schedule "
            "is starbucks (the default, which was espresso before): set ese.schedule: espresso") in result.stderr
    assert not (tmp_path / "out").exists()
