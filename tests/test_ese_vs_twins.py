"""The ESE and MoE plans on the quality protocol: twins start from their slice of the real start model, ESE runs are
chosen and cut by their slices' dev mean, the equal-wall-clock dense run's passes come from a timing of both jobs,
and the report sets every diagonal slice beside its twin."""

import json
import math
import os
import subprocess
import sys

import pytest
from transformers import AutoConfig, TrainerControl, TrainerState

import bench.ese_report as ese_report
import bench.ese_vs_twins as ese_vs_twins
import bench.jobs as jobs
import bench.quality_vs_peers as quality
from bench.jobs import CONTENDERS, SLICES_METRIC
from bench.machine import busy_cores
from bench.peers.dev_callback import HalvingCut, RecipeHalving

SEEDS = (42, 43, 44)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The harness's folders (start models, data, records, results) under a temporary folder."""
    root = tmp_path_factory.mktemp("quality")
    with pytest.MonkeyPatch.context() as patch:
        for module, name, value in ((jobs, "WORK", root / "work"), (quality, "WORK", root / "work"),
                                    (quality, "RUNS", root / "runs"), (ese_report, "RUNS", root / "runs"),
                                    (ese_report, "RESULTS", root)):
            patch.setattr(module, name, value)
        (root / "runs" / "b").mkdir(parents=True)
        yield root


def test_a_twin_starts_from_its_slice_of_the_start_exported_once(work):
    config = quality.recipe_config("b", CONTENDERS["twin-2x256"], 1e-4, 42, 10, work / "out")
    folder = work / "work" / "starts" / "b-2x256"
    assert config["model_name_or_path"] == str(folder) and config["metric_for_best_model"] == "sts_dev_spearman"
    assert AutoConfig.from_pretrained(folder).num_hidden_layers == 2
    assert json.loads((folder / "config_sentence_transformers.json").read_text())["truncate_dim"] == 256
    assert CONTENDERS["twin-2x256"].recipe_args == ("--embedding_dim", "256")
    written = (folder / "config.json").stat().st_mtime_ns
    assert jobs.start_model("b", (2, 256)) == str(folder) and (folder / "config.json").stat().st_mtime_ns == written
    assert [name for name in CONTENDERS if name.startswith("twin-")] == [
        f"twin-{layer}x{dim}" for layer, dim in jobs.ese_diagonal("b")[:-1]]


def test_ese_contenders_are_chosen_and_cut_by_their_slices_mean(work, tmp_path):
    for name in ("ours-espresso", "ours-starbucks"):
        assert quality.recipe_config("b", CONTENDERS[name], 1e-4, 42, 10, tmp_path)["metric_for_best_model"] == \
            SLICES_METRIC
    metrics = {"eval_sts_dev_spearman": 90.0, "eval_sts_dev_slices_spearman": 70.0}
    state = TrainerState()
    state.global_step = 4
    by_slices = RecipeHalving(HalvingCut(4, 80.0), tmp_path / "cut.json", SLICES_METRIC)
    assert by_slices.on_evaluate(None, state, TrainerControl(), metrics=metrics).should_training_stop
    assert json.loads((tmp_path / "cut.json").read_text()) == {"stopped_at": 4}
    by_full = RecipeHalving(HalvingCut(4, 80.0), tmp_path / "kept.json")
    assert not by_full.on_evaluate(None, state, TrainerControl(), metrics=metrics).should_training_stop


def test_starbucks_at_its_diagonals_time_gets_the_twins_and_ours_summed_step_time_over_its_own(work):
    """ours-starbucks-eq's references are exactly the start's diagonal trained separately (its twins and ours); per
    round their seconds per step are summed over Starbucks', and the median round's ratio sets its passes."""
    contender = CONTENDERS["ours-starbucks-eq"]
    assert contender.time_of == ("ours", *ese_vs_twins.twins("b")) and contender.time_against == "ours-starbucks"
    assert contender.recipe_args == CONTENDERS["ours-starbucks"].recipe_args
    assert contender.dev_metric == SLICES_METRIC
    seconds = {"ours": [1.0, 1.2, 1.1], "twin-1x128": [0.4, 0.5, 0.45], "twin-2x256": [0.7, 0.8, 0.75],
               "ours-starbucks": [1.0, 1.1, 1.2]}
    entry = ese_vs_twins.equal_time_entry(seconds, contender.time_of, contender.time_against)
    assert entry["round_ratios"] == [2.1, pytest.approx(2.5 / 1.1, abs=1e-4), pytest.approx(2.3 / 1.2, abs=1e-4)]
    assert entry["ratio"] == 2.1 and entry["of"] == "ours + twin-1x128 + twin-2x256"
    path = work / "runs" / "b" / "equal_time.json"
    before = path.read_text() if path.is_file() else None
    try:
        frozen = json.loads(before) if before else {}
        path.write_text(json.dumps({**frozen, contender.name: entry}))
        assert quality.passes("b", contender) == pytest.approx(2.1)
        dense_steps, _ = quality.job_shape("b", CONTENDERS["ours"])
        assert quality.job_shape("b", contender)[0] == math.ceil(2.1 * dense_steps)
    finally:
        path.unlink() if before is None else path.write_text(before)


def write_record(work, name: str, lr: float, seed: int, **fields) -> None:
    record = {"start": "b", "contender": name, "learning_rate": lr, "seed": seed, "steps": 100, "steps_run": 100,
              "train_seconds": 100.0, "machine": "m", "selected_dev": 80.0, "stopped_at": None, **fields}
    (work / "runs" / "b" / f"{name}_lr{lr:g}_seed{seed}.json").write_text(json.dumps(record))


def write_tuned(work, rates: dict[str, float]) -> None:
    path = work / "runs" / "b" / "tuned.json"
    tuned = json.loads(path.read_text()) if path.is_file() else {}
    tuned.update({name: {"learning_rate": lr, "candidates": {}} for name, lr in rates.items()})
    path.write_text(json.dumps(tuned))


def test_the_equal_wall_clock_run_gets_the_passes_moes_timed_step_buys(work, monkeypatch):
    """ours-long waits for the step-time ratio, which ``time`` measures by running both jobs (alternating rounds)
    and freezes: a second ``time`` keeps it, and every rate and seed of ours-long then runs the same job."""
    long = CONTENDERS["ours-long"]
    with pytest.raises(SystemExit, match="bench.ese_vs_twins time --start b"):
        quality.passes("b", long)
    monkeypatch.setattr(ese_vs_twins, "TIMED_STEPS", 1)
    monkeypatch.setattr(ese_vs_twins, "TIMED_ROUNDS", 1)
    monkeypatch.setattr(ese_vs_twins, "QUIET_BELOW", float(os.cpu_count() + 1))  # the suite may run beside a job
    ese_vs_twins.time_equal_time("b", ("ours-long",))
    path = work / "runs" / "b" / "equal_time.json"
    frozen = json.loads(path.read_text())["ours-long"]
    moe, dense = frozen["seconds_per_step"]["ours-moe"], frozen["seconds_per_step"]["ours"]
    assert len(moe) == len(dense) == 1 and frozen["ratio"] == pytest.approx(moe[0] / dense[0], abs=1e-3)
    assert frozen["of"] == "ours-moe" and frozen["steps_timed"] == 1 and frozen["command"].endswith("--start b")
    assert quality.passes("b", long) == pytest.approx(frozen["ratio"])
    written = path.stat().st_mtime_ns
    ese_vs_twins.time_equal_time("b", ("ours-long",))
    assert path.stat().st_mtime_ns == written
    dense_steps, _ = quality.job_shape("b", CONTENDERS["ours"])
    assert quality.job_shape("b", long)[0] == math.ceil(frozen["ratio"] * dense_steps)
    assert quality.passes("b", CONTENDERS["ours-moe2"]) == 1.0
    assert ("--moe.layers", "every_2") == CONTENDERS["ours-moe2"].recipe_args[-2:]


def test_ours_both_is_planned_on_the_rows_its_recipe_loads(work):
    """``ours-both``'s steps and texts per step come from the both-anchor rows, the rows its recipe config loads."""
    from ese_trainer.config.parsing import parse_config
    from ese_trainer.data.sources import load_train_sources
    from ese_trainer.training.run_arguments import ARGUMENT_GROUPS, RunArguments

    both, ours = CONTENDERS["ours-both"], CONTENDERS["ours"]
    config = quality.recipe_config("b", both, 1e-4, 42, 10, work / "out")
    args = RunArguments(*parse_config(["--config", write_yaml(work / "both.yaml", config), *both.recipe_args],
                                      ARGUMENT_GROUPS))
    rows, _ = load_train_sources(args.data.train_sources(), seed=0)
    texts = sum(1 + len(row_texts) for row_texts in rows["texts"])
    sizes = quality.training_files("b")
    assert sizes["rows_both"] == {"nli": len(rows)} and sizes["row_texts_both"] == {"nli": texts}
    assert quality.job_shape("b", both) == (len(rows) // jobs.BATCH, pytest.approx(texts / len(rows) * jobs.BATCH))
    assert quality.job_shape("b", ours)[0] < quality.job_shape("b", both)[0] < 2 * quality.job_shape("b", ours)[0]


def write_yaml(path, config) -> str:
    import yaml

    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_busy_cores_sees_a_process_that_spins():
    spin = "import time\nend = time.time() + 4\nwhile time.time() < end: pass"
    spinning = subprocess.Popen([sys.executable, "-c", spin])
    try:
        assert busy_cores(2.0) > 0.7
    finally:
        spinning.wait(timeout=30)


def grid(cells: dict[tuple[int, int], float]) -> dict:
    return {str(layer): {str(dim): cells.get((layer, dim), 50.0) for dim in (64, 128, 256, 384)}
            for layer in (1, 2, 3)}


def test_the_report_sets_every_diagonal_slice_beside_its_twin(work):
    ese = {"ours": ({(1, 128): [50.0] * 3, (2, 256): [55.0] * 3, (3, 384): [70.0, 70.2, 70.4]}, 4e-4),
           "ours-starbucks": ({(1, 128): [59.5, 60.5, 62.5], (2, 256): [64.0] * 3, (3, 384): [70.1, 69.9, 70.5]},
                              2e-4),
           "ours-espresso": ({(1, 128): [57.0, 58.0, 59.0], (2, 256): [63.0] * 3, (3, 384): [69.0, 69.2, 69.4]},
                             2e-4),
           "twin-1x128": ({(1, 128): [60.0, 61.0, 62.0]}, 4e-4), "twin-2x256": ({(2, 256): [64.5] * 3}, 4e-4)}
    for name, (cells, lr) in ese.items():
        for index, seed in enumerate(SEEDS):
            write_record(work, name, lr, seed, test_grid=grid({cell: values[index] for cell, values in cells.items()}),
                         test={"avg": 0.0})
    write_tuned(work, {name: lr for name, (_, lr) in ese.items()})
    moe = {"ours-moe": (71.0, 2e-4), "ours-moe2": (70.0, 2e-4), "ours-long": (70.5, 4e-4)}
    routing = {"step": 100, "balanced_share": 0.25, "min_share": 0.01, "dead_experts": {"0": [3], "1": []},
               "shares": {"0": [0.4, 0.3, 0.29, 0.01], "1": [0.25] * 4}}
    for name, (avg, lr) in moe.items():
        for seed in SEEDS:
            write_record(work, name, lr, seed, test_grid=grid({}), test={"avg": avg + (seed - 43) / 10},
                         routing=routing, passes=1.25 if name == "ours-long" else 1.0)
    for seed, value in zip(SEEDS, (70.0, 70.2, 70.4)):  # ours' released model: its full cell
        record_path = work / "runs" / "b" / f"ours_lr0.0004_seed{seed}.json"
        record = json.loads(record_path.read_text())
        record["test"] = {"avg": value}
        record_path.write_text(json.dumps(record))
    write_tuned(work, {name: lr for name, (_, lr) in moe.items()})
    moved = work / "runs" / "b" / "twin-2x256_lr0.0004_seed44.json"
    moved.write_text(json.dumps({**json.loads(moved.read_text()), "machine": "another CPU"}))

    ese_report.write_report()
    summary = json.loads((work / "ese_vs_twins.json").read_text())["b"]
    first, second, full = summary["ese"]["diagonal"]
    assert first["slice"] == [1, 128] and first["twin_contender"] == "twin-1x128"
    starbucks = first["variants"]["ours-starbucks"]
    assert starbucks["gap_to_twin"]["mean"] == pytest.approx(-1 / 6) and starbucks["gap_to_twin"]["won"] == 1
    assert starbucks["meets_target"] and not first["variants"]["ours-espresso"]["meets_target"]
    assert second["variants"]["ours-starbucks"]["gap_to_twin"]["mean"] == pytest.approx(-0.5)
    assert full["twin_contender"] == "ours" and full["variants"]["ours"]["gap_to_twin"] is None
    assert summary["ese"]["full_size"]["ours-starbucks"]["gap_to_no_ese"]["mean"] == pytest.approx(-0.1 / 3)
    assert summary["ese"]["full_size"]["ours-starbucks"]["meets_target"]
    assert not summary["ese"]["full_size"]["ours-espresso"]["meets_target"]
    moe_summary = summary["moe"]
    assert moe_summary["equal_steps"]["ours-moe"]["mean"] == pytest.approx(0.8)
    assert moe_summary["equal_steps"]["ours-moe2"]["won"] == 0
    assert moe_summary["equal_time"]["ours-moe"]["mean"] == pytest.approx(0.5)
    assert summary["machines"]["another CPU"] == ["twin-2x256 44"] and "ours-long 44" in summary["machines"]["m"]
    assert "- another CPU: twin-2x256 44" in (work / "ese_vs_twins.md").read_text()
    assert moe_summary["contenders"]["ours-long"]["passes"] == 1.25
    text = (work / "ese_vs_twins.md").read_text()
    assert "| 1 x 128 (twin-1x128) | 61.00 ± 1.00 |" in text and "dead layer 0: 1, layer 1: 0" in text
    assert (work / "ese_vs_twins.png").stat().st_size > 10_000


def test_scoring_passes_over_contenders_not_yet_tuned(work):
    """The plan scores after every run, while later contenders have no rate yet: those are left for later."""
    (work / "runs" / "b" / "tuned.json").write_text(json.dumps({"ours": {"learning_rate": 4e-4, "candidates": {}}}))
    write_record(work, "ours", 4e-4, 42, test_grid={"3": {"384": 70.0}}, test={"avg": 70.0})
    ese_vs_twins.score_grids("b", ["ours", "ours-espresso", "twin-1x128"])  # neither a rate nor a run to score
    with pytest.raises(SystemExit, match="ours-espresso has no learning rate yet"):
        quality.chosen_rate("b", "ours-espresso")
