"""The quality benchmark's protocol on real data and real trainers: sentence-transformers' NLI triplets, successive
halving over learning rates, the grid's extension, and STS-B dev scored inside a peer's trainer and our recipe's."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from sentence_transformers import SentenceTransformer

from bench.jobs import CONTENDERS, SWEEP_OPTIONS, half_dev, halving_choice, second_best_half
from bench.peers.dev_callback import HalvingCut
from bench.quality_vs_peers import extended_grid, st_nli_triplets
from bench.quality_vs_peers import recipe_config as quality_config
from ese_trainer.config.parsing import parse_config
from ese_trainer.training.build import source_term_weights
from ese_trainer.training.run_arguments import ARGUMENT_GROUPS, RunArguments, check_arguments

from .conftest import EMBEDDED_DATA, REPO

SNLI = EMBEDDED_DATA / "SNLI"


def snli_dev_pairs(limit: int) -> list[tuple[str, str, str]]:
    lines = [(SNLI / f"{name}.dev").read_text().splitlines()[:limit] for name in ("s1", "s2", "labels")]
    return list(zip(*lines))


def test_st_triplets_take_both_anchors_of_every_premise():
    pairs = snli_dev_pairs(600)
    entailed = {frozenset((a, b)) for a, b, label in pairs if label == "entailment"}
    contradicted = {frozenset((a, b)) for a, b, label in pairs if label == "contradiction"}
    premises = {a for a, _, label in pairs if label == "entailment"} & {a for a, _, label in pairs
                                                                       if label == "contradiction"}
    triplets = st_nli_triplets(pairs)
    assert len(triplets) % 2 == 0 and len(triplets) >= 2 * len(premises) > 100
    for first, second in zip(triplets[::2], triplets[1::2]):
        key = first["anchor"]  # (key, entailment, contradiction), then (entailment, key, contradiction)
        assert second["positive"] == key
        assert frozenset((key, first["positive"])) in entailed and frozenset((key, second["anchor"])) in entailed
        assert {frozenset((key, first["negative"])), frozenset((key, second["negative"]))} <= contradicted
    anchors, positives = {t["anchor"] for t in triplets}, {t["positive"] for t in triplets}
    assert premises <= anchors and premises <= positives
    assert st_nli_triplets(pairs) == triplets  # seeded


def test_halving_cut_stops_only_at_half_and_only_below_the_bar():
    cut = HalvingCut(half_step=4, keep_at_least=80.0)
    assert [cut.stop_after(step, dev) for step, dev in ((2, 79.0), (4, 79.5), (6, 70.0))] == [False, True, False]
    assert cut.stopped_at == 4
    kept = HalvingCut(half_step=4, keep_at_least=80.0)
    assert not any(kept.stop_after(step, dev) for step, dev in ((2, 80.5), (4, 79.0), (6, 60.0)))  # best so far
    free = HalvingCut(half_step=4, keep_at_least=None)
    assert not any(free.stop_after(step, 0.0) for step in (2, 4, 6)) and free.stopped_at is None


def record(lr: float, dev_by_step: dict[int, float]) -> dict:
    return {"learning_rate": lr, "steps": max(dev_by_step), "dev_by_step": {str(k): v for k, v in dev_by_step.items()},
            "selected_dev": max(dev_by_step.values())}


def test_halving_picks_from_the_top_two_at_half_the_pass():
    # 8 evaluations a run; half the pass is the 4th. The slow starter has the best final dev but is third at half.
    def curve(at_half: list[float], after: float) -> dict[int, float]:
        return {**{10 * (i + 1): dev for i, dev in enumerate(at_half)}, **{50 + 10 * i: after for i in range(4)}}

    records = {1e-5: record(1e-5, curve([70.0, 72.0, 74.0, 75.0], 79.0)),
               2e-5: record(2e-5, curve([74.0, 75.0, 76.0, 77.0], 78.0)),
               4e-5: record(4e-5, curve([76.0, 76.5, 76.0, 76.2], 77.5))}
    assert half_dev(records[1e-5]) == 75.0
    assert half_dev(record(1e-5, {28: 80.1, 56: 80.6, 84: 81.3, 112: 82.2, 223: 81.7})) == 82.2  # last step 223
    assert second_best_half(records) == 76.5 and second_best_half({1e-5: records[1e-5]}) is None
    assert halving_choice(records) == 2e-5


def test_the_grid_grows_past_the_chosen_edge():
    assert extended_grid([5e-5, 1e-4, 2e-4], 2e-4) == [5e-5, 1e-4, 2e-4, 4e-4]
    assert extended_grid([5e-5, 1e-4, 2e-4], 5e-5) == [2.5e-5, 5e-5, 1e-4, 2e-4]


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def test_sentence_transformers_peer_scores_dev_inside_its_trainer_and_stops_at_the_cut(minilm_path, small_dev,
                                                                                      tmp_path):
    triplets = tmp_path / "triplets.jsonl"
    triplets.write_text("".join(json.dumps(t) + "\n" for t in st_nli_triplets(snli_dev_pairs(400))[:64]))
    out = tmp_path / "out"
    result = run_module("bench.peers.st_train", "--model", minilm_path, "--mode", "mnrl", "--triplets_jsonl",
                        str(triplets), "--output_dir", str(out), "--learning_rate", "1e-4", "--batch_size", "16",
                        "--dev_file", str(small_dev), "--eval_every", "1", "--half_step", "2", "--keep_at_least",
                        "101")
    assert result.returncode == 0, result.stderr[-3000:]
    dev_record = json.loads((out / "dev_record.json").read_text())
    assert dev_record["stopped_at"] == 2 and dev_record["steps"] == 2 and dev_record["max_steps"] == 4
    assert list(dev_record["dev_by_step"]) == ["1", "2"]
    best = SentenceTransformer(str(out / "best"), device="cpu")
    assert best.encode(["A man is playing a guitar."]).shape == (1, 384)


def test_our_recipe_stops_at_the_cut(minilm_path, small_dev, tmp_path):
    out = tmp_path / "out"
    cut = tmp_path / "halving.json"
    result = run_module("bench.peers.recipe_train", "--half_step", "2", "--keep_at_least", "101", "--record",
                        str(cut), "--", "--config", "configs/smoke_snli.yaml", "--output_dir", str(out),
                        "--sts_data_dir", str(EMBEDDED_DATA), "--sts_dev", str(small_dev), "--sts_tasks", "none",
                        "--suite_before_training", "false", "--max_train_samples", "64",
                        "--per_device_train_batch_size", "8", "--max_steps", "6", "--eval_steps", "1",
                        "--save_steps", "1", "--logging_steps", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(cut.read_text()) == {"stopped_at": 2}
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["max_steps"] == 6


def test_the_plain_dev_score_for_angles_trainer_equals_our_evaluator(minilm, tokenizer):
    from bench.peers.dev_callback import padded_mean_dev_score
    from ese_trainer.data import load_sts_pairs
    from ese_trainer.evaluation.sts import evaluate_sts

    dev = load_sts_pairs(str(EMBEDDED_DATA / "STS" / "STSBenchmark" / "sts-dev.csv"), name="dev")
    pairs = type(dev)("dev", dev.sentences1[:300], dev.sentences2[:300], dev.scores[:300])
    ours = evaluate_sts(minilm, tokenizer, {"dev": pairs}, "mean", packed=False, show_progress=False)["dev"]
    plain = padded_mean_dev_score(minilm, tokenizer, pairs.sentences1, pairs.sentences2, pairs.scores)
    assert abs(plain - ours) < 0.01 and 70 < ours < 95


COUNTER = """
import sys, time
from pathlib import Path
from bench.jobs import exclusive, write_atomically
folder, counter = Path(sys.argv[1]), Path(sys.argv[1]) / "counter"
for _ in range(40):
    with exclusive("counter", folder):
        count = int(counter.read_text())
        time.sleep(0.002)  # a read-modify-write as slow as a harness's, where two processes would interleave
        write_atomically(counter, str(count + 1))
"""


def test_two_harnesses_side_by_side_lose_no_update(tmp_path):
    """The quality and ESE harnesses run one per core and share records and tuned.json: each read-modify-write
    holds the lock, so none is lost."""
    (tmp_path / "counter").write_text("0")
    workers = [subprocess.Popen([sys.executable, "-c", COUNTER, str(tmp_path)], cwd=REPO) for _ in range(2)]
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0]
    assert (tmp_path / "counter").read_text() == "80"


REBUILD = """
import json, shutil, sys
from pathlib import Path
import bench.jobs as jobs, bench.quality_vs_peers as quality
root = Path(sys.argv[1])
jobs.WORK = quality.WORK = root / "work"
quality.RUNS = root / "runs"
jobs.offline()
path = quality.record_path("b", "ours", 1e-4, 42)
quality.run_one("b", "ours", 1e-4, 42)
folder = quality.model_path("b", "ours", 1e-4, 42)
shutil.rmtree(folder)  # a new machine: the record is committed, the model is not
with quality.run_lock(path):
    assert quality.kept_model(path) == folder and (folder / "config.json").is_file()
record = json.loads(path.read_text())
print("REBUILT", json.dumps(record["rebuilt"]))
record["dev_by_step"] = {step: dev + 1.0 for step, dev in record["dev_by_step"].items()}  # the code changed since
path.write_text(json.dumps(record))
shutil.rmtree(folder)
try:
    with quality.run_lock(path):
        quality.kept_model(path)
except SystemExit as refusal:
    print("REFUSED", refusal, folder.exists())
"""


def test_a_chosen_runs_lost_model_is_trained_again_to_its_records_dev_curve(tmp_path):
    """Models are not committed: on a new machine a chosen run is trained again from its record before the test
    suite scores it, and a rebuilt curve that strays from the record's is refused and its model removed."""
    result = subprocess.run([sys.executable, "-c", REBUILD, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "BENCH_QUALITY_TINY": "1", "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    said = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in result.stdout.splitlines()
            if line.startswith(("REBUILT ", "REFUSED "))}
    rebuilt, refusal = json.loads(said["REBUILT"]), said["REFUSED"]
    record = json.loads((tmp_path / "runs" / "b" / "ours_lr0.0001_seed42.json").read_text())
    assert rebuilt["max_dev_gap"] < 0.01 and rebuilt["selected_step"] == record["selected_step"]
    assert "differs from the record's by up to 1.0" in refusal and refusal.endswith("False")


@pytest.mark.parametrize("name", sorted(SWEEP_OPTIONS))
def test_every_sweep_option_is_a_setting_the_recipe_takes(name, tmp_path):
    """``sweep --contender`` passes these to ``recipes/train_nli.py``: each parses, with its contender's own
    arguments, into the value it names (an ESE candidate into the run's ESE settings)."""
    contender = {"sb": "ours-starbucks", "es": "ours-espresso"}.get(name.split("-")[0], "ours-111")
    options = SWEEP_OPTIONS[name]
    args = RunArguments(*parse_config(["--config", "configs/smoke_snli.yaml", "--output_dir", str(tmp_path),
                                       *CONTENDERS[contender].recipe_args, *options], ARGUMENT_GROUPS))
    check_arguments(args)
    key, value = options[0].removeprefix("--"), options[1:]
    if key.startswith("ese."):
        setting = getattr(args.ese.settings(), key.removeprefix("ese."))
        assert setting == (list(value) if isinstance(setting, list) else type(setting)(value[0]))


@pytest.mark.parametrize("name", ["ours-sts-cosent", "ours-both-ibn-sts-cosent"])
def test_a_contenders_sts_weights_reach_its_sts_sources_only(name, tmp_path):
    """At start c the in-domain STS sources of ``ours-sts-cosent`` train by CoSENT alone, as the recipe reads its
    config; SNLI keeps the run's weights (and, for the both-anchor candidate, its anchors)."""
    config = quality_config("c", CONTENDERS[name], 2e-5, 42, 10, tmp_path)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    args = RunArguments(*parse_config(["--config", str(path), *CONTENDERS[name].recipe_args], ARGUMENT_GROUPS))
    check_arguments(args)
    sources = args.data.train_sources()
    assert [source.kind for source in sources] == ["nli", "nli", "sts", "sts"]
    weights = source_term_weights([source.loss_weights for source in sources], {"cosent": 1, "ibn": 10, "angle": 1})
    assert weights == [None, None, {"cosent": 1.0, "ibn": 0.0, "angle": 0.0}, {"cosent": 1.0, "ibn": 0.0, "angle": 0.0}]
    assert args.data.nli_anchors == ("both_in_batch" if "both" in name else "premise")
    plain = quality_config("c", CONTENDERS["ours"], 2e-5, 42, 10, tmp_path)
    assert all("loss_weights" not in source for source in plain["train_datasets"])


def test_the_protocol_gives_the_extra_seeds_to_the_ours_dev_prefers_and_the_peers_close_to_it(tmp_path, monkeypatch):
    """After seeds 42-44, ours is the candidate of ours with the best mean dev (here the both-anchor rows, not the
    defaults); seeds 45-46 go to it, the best peer and any peer within ``CLOSE`` of it; raw labels run at the
    defaults' rate. Runs are records already on disk (``run_one`` is logged, nothing trains)."""
    import bench.quality_vs_peers as quality

    rates = {"ours": 4e-4, "ours-both": 1e-4, "st-combined": 1e-4, "angle": 2e-4}
    devs = {"ours": 81.6, "ours-both": 81.8, "st-combined": 81.5, "angle": 81.2}  # angle: 0.6 below ours-both
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "tuned.json").write_text(json.dumps({name: {"learning_rate": lr} for name, lr in rates.items()}))
    for name, lr in rates.items():
        for seed in (42, 43, 44):
            (folder / f"{name}_lr{lr:g}_seed{seed}.json").write_text(json.dumps({"seed": seed,
                                                                                  "selected_dev": devs[name]}))
    asked = []
    monkeypatch.setattr(quality, "RUNS", tmp_path)
    monkeypatch.setattr(quality, "tune", lambda start, name, seed: rates[name])
    monkeypatch.setattr(quality, "score_chosen", lambda start, names=None: None)
    monkeypatch.setattr(quality, "run_one", lambda start, name, lr, seed, *rest, **options: asked.append(
        (name, lr, seed)))
    quality.protocol("b", list(rates))
    more = [call for call in asked if call[2] in (45, 46) or call[0] == "raw-labels"]
    assert more == [("ours-both", 1e-4, 45), ("st-combined", 1e-4, 45), ("ours-both", 1e-4, 46),
                    ("st-combined", 1e-4, 46), ("raw-labels", 4e-4, 42)]
