"""Training sources as grouped rows (NLI premises, STS pairs, triplets and n-tuples, plain pairs, mined negatives);
one source per step and no text twice in a step."""

import collections
import json
import math
import os
import subprocess
import sys

import pytest

from ese_trainer.data import DataError
from ese_trainer.data.arguments import DataArguments
from ese_trainer.data.batching import SourceBatchSampler, no_duplicate_batches
from ese_trainer.data.collator import row_text_ids
from ese_trainer.data.rows import NEGATIVE, POSITIVE, SCORED, RoleThresholds
from ese_trainer.data.sources import TrainSource, load_train_sources

from .conftest import EMBEDDED_DATA, REPO, small_sts_args

STSB_TRAIN = EMBEDDED_DATA / "STS" / "STSBenchmark" / "sts-train.csv"
SICK_TRAIN = EMBEDDED_DATA / "SICK" / "SICK_train.txt"


def sources(*entries):
    return [TrainSource.parse(entry, index) for index, entry in enumerate(entries)]


@pytest.mark.parametrize("entry,pattern", [
    ({"source": "data/SNLI", "kind": "qa"}, r"train_datasets\[0\]: kind must be one of"),
    ({"source": "data/SNLI", "weights": 2}, r"train_datasets\[0\]: unknown key\(s\) \['weights'\]"),
    ({"source": "data/SNLI", "weight": 0}, r"weight must be > 0"),
    ({"source": "x.csv", "kind": "sts", "label_map": {"entailment": 1.0}}, "label_map applies to kind nli only"),
    ({"source": "x.csv", "kind": "sts", "score_range": [5, 0]}, "low < high"),
    ({"kind": "nli"}, "at least 'source'"),
    ({"source": "x.csv", "kind": "pair", "mine_negatives": {"num_negative": 2}}, r"mine_negatives: .*num_negative"),
    ({"source": "x.csv", "kind": "pair", "mine_negatives": {"sampling_strategy": "best"}}, "sampling_strategy"),
    ({"source": "x.csv", "kind": "sts", "loss_weights": [1, 0]}, r"train_datasets\[0\]: loss_weights must be a map"),
    ({"source": "x.csv", "kind": "sts", "loss_weights": {"cosent": 1}}, r"'cosent' is not a term weight"),
    ({"source": "x.csv", "kind": "sts", "loss_weights": {"ibn_w": -1}}, r"ibn_w must be a number >= 0, got -1"),
    ({"source": "x.csv", "kind": "sts", "loss_weights": {"ibn_w": "0"}}, r"ibn_w must be a number >= 0, got '0'"),
    ({"source": "data/SNLI", "anchors": "hypothesis"}, r"train_datasets\[0\]: anchors must be one of"),
    ({"source": "x.csv", "kind": "sts", "anchors": "both"}, "anchors applies to kind nli only"),
])
def test_bad_source_entries_name_the_entry_and_key(entry, pattern):
    with pytest.raises(ValueError, match=pattern):
        TrainSource.parse(entry, 0)


def test_an_nli_premise_becomes_rows_of_positive_hard_negative_and_scored_texts():
    rows, [counts] = load_train_sources(sources({"source": "data/SNLI", "split": "dev"}), seed=0)
    assert counts.nli["kept"] == 9842 and counts.rows["ranking_pairs"] == 9842  # every pair once
    # a row per entailment; a premise without one: a row of its own
    assert counts.rows["rows"] == counts.rows_built == len(rows) == 3574
    assert counts.rows["rows_with_positive"] == 3329 and counts.rows["negatives"] == 3278
    by_premise = collections.defaultdict(list)
    for row in rows:
        by_premise[row["anchor"]].append(row)
        for role, score in zip(row["roles"], row["scores"]):
            assert {POSITIVE: 1.0, NEGATIVE: 0.0, SCORED: 0.5}[role] == score  # the label map decides the role
        assert row["roles"].count(POSITIVE) <= 1
    # a premise with two entailments and one contradiction: two rows, the contradiction in one of them
    two = next(group for group in by_premise.values() if sum(r["roles"].count(POSITIVE) for r in group) == 2
               and sum(r["roles"].count(NEGATIVE) for r in group) == 1 and len(group) == 2)
    assert sorted(len(row["texts"]) for row in two) == [1, 2]


def test_both_anchors_add_each_entailment_as_the_anchor_of_its_premise():
    premise_rows, _ = load_train_sources(sources({"source": "data/SNLI", "split": "dev"}), seed=0)
    rows, [counts] = load_train_sources(sources({"source": "data/SNLI", "split": "dev", "anchors": "both"}), seed=0)
    assert len(rows) == 3574 + 3329  # every row, then each row with a positive again
    assert counts.rows["rows_with_positive"] == 2 * 3329
    assert counts.rows["ranking_pairs"] == 9842 + 3329  # the premise-entailment pair again; negatives unscored
    originals = [(row["anchor"], tuple(row["texts"])) for row in premise_rows]
    assert [(row["anchor"], tuple(row["texts"])) for row in rows.select(range(3574))] == originals
    for premise_row, reversed_row in zip((row for row in premise_rows if POSITIVE in row["roles"]),
                                         rows.select(range(3574, len(rows)))):
        entailment = premise_row["texts"][premise_row["roles"].index(POSITIVE)]
        contradictions = [text for text, role in zip(premise_row["texts"], premise_row["roles"]) if role == NEGATIVE]
        assert reversed_row["anchor"] == entailment
        assert reversed_row["texts"] == [premise_row["anchor"], *contradictions]
        assert reversed_row["roles"] == [POSITIVE] + [NEGATIVE] * len(contradictions)
        assert reversed_row["scores"][0] == 1.0 and all(math.isnan(score) for score in reversed_row["scores"][1:])
    # both_in_batch: the same rows, the added ones unscored, so every pair is ranked once
    in_batch, [counts] = load_train_sources(sources({"source": "data/SNLI", "split": "dev",
                                                     "anchors": "both_in_batch"}), seed=0)
    assert list(in_batch["anchor"]) == list(rows["anchor"]) and list(in_batch["texts"]) == list(rows["texts"])
    assert counts.rows["ranking_pairs"] == 9842 and counts.rows["rows_with_positive"] == 2 * 3329
    assert all(math.isnan(score) for row in in_batch.select(range(3574, len(in_batch))) for score in row["scores"])
    # the run's nli_anchors reaches NLI entries without their own key, and never an STS one
    args = DataArguments(train_datasets=[json.dumps({"source": "data/SNLI", "split": "dev"}),
                                         json.dumps({"source": "data/SNLI", "split": "test", "anchors": "premise"}),
                                         json.dumps({"source": str(STSB_TRAIN), "kind": "sts"})],
                         nli_anchors="both")
    assert [source.anchors for source in args.train_sources()] == ["both", "premise", None]
    assert DataArguments(nli_anchors="both").train_sources()[0].anchors == "both"
    with pytest.raises(ValueError, match="nli_anchors must be one of"):
        DataArguments(nli_anchors="hypothesis")


def test_raw_class_ids_as_scores_invert_the_roles():
    raw = {"entailment": 0.0, "neutral": 0.5, "contradiction": 1.0}
    rows, _ = load_train_sources(sources({"source": "data/SNLI", "split": "dev"}), seed=0, label_map=raw)
    mapped, _ = load_train_sources(sources({"source": "data/SNLI", "split": "dev"}), seed=0)
    positives = {text for row in rows for text, role in zip(row["texts"], row["roles"]) if role == POSITIVE}
    negatives = {text for row in mapped for text, role in zip(row["texts"], row["roles"]) if role == NEGATIVE}
    assert positives and len(positives & negatives) > 0.9 * len(positives)  # contradictions became positives


def test_neutral_joins_the_softmax_with_a_higher_negative_threshold():
    rows, [counts] = load_train_sources(sources({"source": "data/SNLI", "split": "dev"}), seed=0,
                                        thresholds=RoleThresholds(negative_max_score=0.5))
    assert counts.rows["scored_only"] == 0 and counts.rows["negatives"] == 3278 + 3235


def test_sts_triplet_ntuple_and_pair_sources_with_their_counts(tmp_path):
    triplets = tmp_path / "triplets.jsonl"
    triplets.write_text("\n".join(json.dumps({"anchor": f"A dog runs {i}.", "positive": "A dog moves.",
                                              "negative": "A cat sleeps."}) for i in range(5)) + "\n")
    ntuples = tmp_path / "ntuples.csv"
    ntuples.write_text("anchor,positive,negative_1,negative_2\nA man sings.,Someone sings.,A man sleeps.,Rain.\n")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("anchor\tpositive\nA man sings.\tSomeone sings.\nTwo kids play.\tChildren play.\n")
    rows, counts = load_train_sources(sources(
        {"source": "data/SNLI", "split": "dev", "max_samples": 60},
        {"source": str(STSB_TRAIN), "kind": "sts", "name": "stsb"},
        {"source": str(SICK_TRAIN), "kind": "sts", "score_range": [1, 5], "max_samples": 40},
        {"source": str(triplets), "kind": "triplet"},
        {"source": str(ntuples), "kind": "triplet"},
        {"source": str(pairs), "kind": "pair"},
    ), seed=0)
    assert collections.Counter(rows["source"]) == {0: 60, 1: 5749, 2: 40, 3: 5, 4: 1, 5: 2}
    assert [(c.name, c.kind, c.rows_used) for c in counts] == [
        ("data/SNLI[dev]", "nli", 60), ("stsb", "sts", 5749), (str(SICK_TRAIN), "sts", 40),
        (str(triplets), "triplet", 5), (str(ntuples), "triplet", 1), (str(pairs), "pair", 2)]
    stsb = [row["scores"][0] for row in rows if row["source"] == 1]
    assert min(stsb) == 0.0 and max(stsb) == 1.0  # gold 0-5 normalised like evaluation data
    assert counts[1].rows["rows_with_positive"] == sum(score == 1.0 for score in stsb)
    sick = [row["scores"][0] for row in rows if row["source"] == 2]
    assert 0.0 <= min(sick) and max(sick) <= 1.0  # 1-5 mapped onto [0, 1]
    [ntuple] = [row for row in rows if row["source"] == 4]
    assert ntuple["texts"] == ["Someone sings.", "A man sleeps.", "Rain."]
    assert ntuple["roles"] == [POSITIVE, NEGATIVE, NEGATIVE] and ntuple["scores"] == [1.0, 0.0, 0.0]
    assert all(row["roles"] == [POSITIVE] for row in rows if row["source"] == 5)


@pytest.mark.parametrize("content,pattern", [
    ("anchor,positive,negative\nA man sings.,,Rain.\n", r"rows\.csv:2: empty text in column\(s\) \['positive'\]"),
    ("anchor,negative\nA man sings.,Rain.\n", r"rows\.csv: missing column"),
    ("anchor,positive\nA man sings.,Someone sings.\n", r"rows\.csv: missing column 'negative'"),
])
def test_a_bad_ntuple_row_is_an_error_naming_file_and_row(tmp_path, content, pattern):
    path = tmp_path / "rows.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=pattern):
        load_train_sources(sources({"source": str(path), "kind": "triplet"}), seed=0)


@pytest.mark.parametrize("name", ["scores.csv", "stsb_train.txt"])
def test_a_bad_score_of_an_sts_source_is_an_error_naming_file_and_row(tmp_path, name):
    lines = STSB_TRAIN.read_text().splitlines()[:10]
    fields = lines[6].split("\t")
    fields[4] = "7.5"
    lines[6] = "\t".join(fields)
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{name.replace('.', '[.]')}:7: gold score '7.5' is outside \[0, 5\]"):
        load_train_sources(sources({"source": str(path), "kind": "sts"}), seed=0)


def test_mined_negatives_are_counted_and_join_the_softmax_unscored(tmp_path, minilm_path):
    rows, _ = load_train_sources(sources({"source": "data/SNLI", "split": "dev", "max_samples": 300}), seed=0)
    pairs = tmp_path / "pairs.jsonl"
    with pairs.open("w") as handle:
        for row in rows:
            if POSITIVE in row["roles"]:
                handle.write(json.dumps({"anchor": row["anchor"],
                                         "positive": row["texts"][row["roles"].index(POSITIVE)]}) + "\n")
    asked = sum(1 for _ in pairs.open())
    mined, [counts] = load_train_sources(sources({"source": str(pairs), "kind": "pair", "mine_negatives": {
        "num_negatives": 2, "range_min": 1, "range_max": 20, "relative_margin": 0.05}}), seed=0,
        mining_model=minilm_path)
    report = counts.mined
    assert report["rows_asked"] == asked and report["model"] == minilm_path
    assert report["rows_full"] + report["rows_partial"] + report["rows_none"] == asked and report["rows_full"] > 0
    assert report["negatives"] == counts.rows["negatives"] == sum(row["roles"].count(NEGATIVE) for row in mined)
    for row in mined:
        negatives = [text for text, role in zip(row["texts"], row["roles"]) if role == NEGATIVE]
        assert len(negatives) <= 2 and row["anchor"] not in negatives and row["texts"][0] not in negatives
        assert all(math.isnan(score) for score, role in zip(row["scores"], row["roles"]) if role == NEGATIVE)
    assert counts.rows["ranking_pairs"] == asked  # mined negatives have no gold score: not ranking pairs
    with pytest.raises(DataError, match="mine_negatives needs a model"):
        load_train_sources(sources({"source": str(pairs), "kind": "pair", "mine_negatives": {}}), seed=0)


def test_no_text_appears_twice_in_a_step_and_each_step_holds_one_source():
    rows, _ = load_train_sources(sources({"source": "data/SNLI", "split": "dev"},
                                         {"source": "data/SNLI", "split": "test"},
                                         {"source": str(STSB_TRAIN), "kind": "sts"}), seed=0)
    row_texts = [row_text_ids(row) for row in rows.select_columns(["anchor", "texts"])]
    sampler = SourceBatchSampler(rows["source"], row_texts, 32, [1.0, 1.0, 1.0], processes=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2 * sum(sampler.steps_per_source()) and sampler.relaxed_batches == 0
    for step in range(0, len(batches), 2):
        global_batch = batches[step] + batches[step + 1]
        assert len({rows[row]["source"] for row in global_batch}) == 1
        seen = set()
        for row in global_batch:
            texts = set(row_texts[row])
            assert not texts & seen  # no text of this row is in another row of the step
            seen |= texts


def test_no_duplicates_rule_defers_a_row_and_only_relaxes_when_nothing_else_fits():
    row_texts = [(1, 2), (1, 3), (4, 5), (6, 7)]
    batches, relaxed = no_duplicate_batches([0, 1, 2, 3], row_texts, 2, 2)
    assert batches == [[0, 2], [1, 3]] and relaxed == 0
    batches, relaxed = no_duplicate_batches([0, 1], [(1,), (1,)], 2, 1)
    assert batches == [[0, 1]] and relaxed == 1  # the only rows left: a duplicate, counted


def test_every_step_comes_from_one_source_in_proportion():
    texts = [(row,) for row in range(416)]
    sampler = SourceBatchSampler([0] * 320 + [1] * 96, texts, batch_size=32, weights=[1.0, 2.0])
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10 + 6  # the second source drawn twice per epoch
    assert all(len({0 if row < 320 else 1 for row in batch}) == 1 for batch in batches)
    assert sorted(row for batch in batches for row in batch if row < 320) == list(range(320))
    assert sampler.steps_per_source() == [10, 6]
    robin = SourceBatchSampler([0] * 320 + [1] * 96, texts, 32, [1.0, 1.0], "round_robin")
    assert len(list(robin)) == len(robin) == 6  # alternate until the smaller source runs out
    assert [0 if batch[0] < 320 else 1 for batch in robin] == [0, 1] * 3


def test_order_depends_on_seed_and_epoch_only():
    def order(seed, epoch):
        sampler = SourceBatchSampler([0] * 128, [(row,) for row in range(128)], 32, [1.0], seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(1, 0) == order(1, 0) and order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)


def test_recipe_trains_on_several_sources_and_reports_each(small_sts, tmp_path):
    output_dir = tmp_path / "out"
    entries = [{"source": "data/SNLI", "split": "dev", "max_samples": 48, "anchors": "both"},
               {"source": "data/STS/STSBenchmark/sts-train.csv", "kind": "sts", "max_samples": 64, "name": "stsb",
                "loss_weights": {"ibn_w": 0, "angle_w": 0}}]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        [sys.executable, "recipes/train_nli.py", "--config", "configs/smoke.yaml", "--output_dir", str(output_dir),
         "--train_datasets", *map(json.dumps, entries),
         "--per_device_train_batch_size", "16", "--max_steps", "3", "--eval_steps", "3", "--save_steps", "3",
         *small_sts_args(small_sts), "--suite_before_training", "false"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads((output_dir / "data_counts.json").read_text())
    assert [(s["name"], s["kind"], s["rows_used"]) for s in counts["sources"]] == [
        ("data/SNLI[dev]", "nli", 48), ("stsb", "sts", 64)]
    assert counts["steps_per_epoch"] == {"data/SNLI[dev]": 3, "stsb": 4}
    assert [s["loss_weights"] for s in counts["sources"]] == [None, {"ibn_w": 0, "angle_w": 0}]
    assert [(s["anchors"], s["rows_built"]) for s in counts["sources"]] == [("both", 3574 + 3329), (None, 5749)]
    card = (output_dir / "README.md").read_text()
    assert "NLI rows anchored on both sides (each row again with its entailment as the anchor" in card
    assert ("Loss weights of their own (other terms at the objective's weights below): `stsb`: ibn_w 0, angle_w 0."
            in card)
    assert "| `stsb` | sts | 5749 | 5749 | 5749 | 64 |" in card
    assert "- stanfordnlp/snli" in card and "- sentence-transformers/stsb" in card  # datasets: metadata


def test_each_step_trains_with_its_sources_loss_weights(tokenizer, tiny_bert):
    """An STS source trained with CoSENT alone (sentence-transformers' choice for STS data) beside SNLI at the run's
    weights: the collated batch says its source, and the loss of each step is its source's weighted sum."""
    from ese_trainer.data.collator import SOURCE_KEY, RowCollator
    from ese_trainer.ese.arguments import ESEArguments
    from ese_trainer.losses.arguments import LossArguments
    from ese_trainer.modeling.encoding import SentenceEncoder
    from ese_trainer.training.build import build_objective
    from ese_trainer.training.training_model import TrainingModel

    rows, _ = load_train_sources(sources({"source": str(EMBEDDED_DATA / "SNLI"), "split": "dev", "max_samples": 8},
                                         {"source": str(STSB_TRAIN), "kind": "sts", "max_samples": 8,
                                          "loss_weights": {"ibn_w": 0, "angle_w": 0}}), seed=0)
    loss_args = LossArguments()
    objective = build_objective(loss_args, ESEArguments(), tiny_bert.config, [None, {"ibn_w": 0, "angle_w": 0}])
    model = TrainingModel(SentenceEncoder(tiny_bert, "mean"), objective)
    collate = RowCollator(tokenizer)
    by_source = {source: [row for row in rows if row["source"] == source] for source in (0, 1)}
    for source, weights in ((0, {"cosent": loss_args.cosent_w, "ibn": loss_args.ibn_w, "angle": loss_args.angle_w}),
                            (1, {"cosent": loss_args.cosent_w, "ibn": 0.0, "angle": 0.0})):
        batch = collate(by_source[source])
        assert batch[SOURCE_KEY].item() == source
        output = model(**batch)
        assert set(output.terms) == {"loss_cosent", "loss_ibn", "loss_angle"}  # every term logged at every step
        expected = sum(weight * output.terms[f"loss_{key}"] for key, weight in weights.items())
        assert output.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert SOURCE_KEY not in collate(by_source[0][:2] + by_source[1][:2])  # rows of two sources: no source


@pytest.mark.parametrize("weights,pattern", [
    ([None, {"ibm_w": 0}], r"train_datasets\[1\]\.loss_weights: unknown \['ibm_w'\]; valid keys: \['cosent_w'"),
    ([{"cosent_w": 0, "ibn_w": 0, "angle_w": 0}], r"train_datasets\[0\]\.loss_weights: every term's weight is 0"),
])
def test_bad_source_loss_weights_stop_the_run_naming_the_entry(weights, pattern, tiny_bert):
    from ese_trainer.config.parsing import ConfigError
    from ese_trainer.ese.arguments import ESEArguments
    from ese_trainer.losses.arguments import LossArguments
    from ese_trainer.training.build import build_objective

    with pytest.raises(ConfigError, match=pattern):
        build_objective(LossArguments(), ESEArguments(), tiny_bert.config, weights)
