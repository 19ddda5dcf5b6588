"""Several training sources: NLI, scored STS pairs and triplets; one source per batch; hard-negative batches."""

import collections
import json
import os
import subprocess
import sys

import pytest

from ese_trainer.data import DataError
from ese_trainer.data.batching import SourceBatchSampler
from ese_trainer.data.sources import TrainSource, load_train_sources

from .conftest import EMBEDDED_DATA, REPO

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
])
def test_bad_source_entries_name_the_entry_and_key(entry, pattern):
    with pytest.raises(ValueError, match=pattern):
        TrainSource.parse(entry, 0)


def test_nli_sts_and_triplet_sources_become_pairs_with_their_counts(tmp_path):
    triplets = tmp_path / "triplets.jsonl"
    triplets.write_text("\n".join(json.dumps({"anchor": f"A dog runs {i}.", "positive": "A dog moves.",
                                              "negative": "A cat sleeps."}) for i in range(5)) + "\n")
    pairs, counts = load_train_sources(sources(
        {"source": "data/SNLI", "split": "dev", "max_samples": 60},
        {"source": str(STSB_TRAIN), "kind": "sts", "name": "stsb"},
        {"source": str(SICK_TRAIN), "kind": "sts", "score_range": [1, 5], "max_samples": 40},
        {"source": str(triplets), "kind": "triplet"},
    ), seed=0)
    by_source = collections.Counter(pairs["source"])
    assert by_source == {0: 60, 1: 5749, 2: 40, 3: 10}
    assert [(c.name, c.kind, c.pairs_used) for c in counts] == [
        ("data/SNLI[dev]", "nli", 60), ("stsb", "sts", 5749), (str(SICK_TRAIN), "sts", 40),
        (str(triplets), "triplet", 10)]
    assert counts[0].nli["kept"] == 9842 and counts[3].rows_read == 5
    stsb = [score for score, source in zip(pairs["score"], pairs["source"]) if source == 1]
    assert min(stsb) == 0.0 and max(stsb) == 1.0  # gold 0-5 normalised like evaluation data
    sick = [score for score, source in zip(pairs["score"], pairs["source"]) if source == 2]
    assert 0.0 <= min(sick) and max(sick) <= 1.0  # 1-5 mapped onto [0, 1]
    triplet_rows = [(g, s) for g, s, source in zip(pairs["group"], pairs["score"], pairs["source"]) if source == 3]
    assert sorted(collections.Counter(g for g, _ in triplet_rows).values()) == [2] * 5  # anchor+pos, anchor+neg
    assert sorted(s for _, s in triplet_rows) == [0.0] * 5 + [1.0] * 5
    groups_per_source = {source: {g for g, s in zip(pairs["group"], pairs["source"]) if s == source}
                         for source in range(4)}
    assert all(groups_per_source[a].isdisjoint(groups_per_source[b]) for a in range(4) for b in range(a + 1, 4))


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


def test_every_batch_comes_from_one_source_in_proportion():
    sampler = SourceBatchSampler([0] * 320 + [1] * 96, list(range(416)), batch_size=32, weights=[1.0, 2.0])
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10 + 6  # the second source drawn twice per epoch
    assert all(len({0 if row < 320 else 1 for row in batch}) == 1 for batch in batches)
    assert sorted(row for batch in batches for row in batch if row < 320) == list(range(320))
    assert sampler.batches_per_source() == [10, 6]
    robin = SourceBatchSampler([0] * 320 + [1] * 96, list(range(416)), 32, [1.0, 1.0], "round_robin")
    assert len(list(robin)) == len(robin) == 6  # alternate until the smaller source runs out
    assert [0 if batch[0] < 320 else 1 for batch in robin] == [0, 1] * 3


def test_order_depends_on_seed_and_epoch_only():
    def order(seed, epoch):
        sampler = SourceBatchSampler([0] * 128, list(range(128)), 32, [1.0], seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(1, 0) == order(1, 0) and order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)


def test_hard_negative_batches_keep_a_premises_pairs_together():
    pairs, _ = load_train_sources(sources({"source": "data/SNLI", "split": "dev", "max_samples": 600}), seed=0,
                                  keep_groups=True)
    groups = pairs["group"]
    sizes = collections.Counter(groups)
    assert sum(size >= 3 for size in sizes.values()) > 0.9 * len(sizes)  # whole premises drawn, not single rows
    sampler = SourceBatchSampler(pairs["source"], groups, 32, [1.0], keep_groups=True)
    split = 0
    for batch in sampler:
        in_batch = collections.Counter(groups[row] for row in batch)
        split += sum(1 for group, count in in_batch.items() if count < sizes[group])
    assert split <= 2 * len(sampler)  # a group is cut only at a batch's two ends
    # and so a premise's contradiction hypothesis shares its entailment pair's batch
    first = next(iter(sampler))
    premises = collections.defaultdict(set)
    for row in first:
        premises[pairs[row]["sentence1"]].add(pairs[row]["score"])
    assert any({0.0, 1.0} <= scores for scores in premises.values())


def test_recipe_trains_on_several_sources_and_reports_each(tmp_path):
    output_dir = tmp_path / "out"
    entries = [{"source": "data/SNLI", "split": "dev", "max_samples": 96},
               {"source": "data/STS/STSBenchmark/sts-train.csv", "kind": "sts", "max_samples": 64, "name": "stsb"}]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        [sys.executable, "recipes/train_nli.py", "--config", "configs/smoke.yaml", "--output_dir", str(output_dir),
         "--train_datasets", *map(json.dumps, entries), "--hard_negative_batches", "true",
         "--per_device_train_batch_size", "16", "--max_steps", "3", "--eval_steps", "3", "--save_steps", "3",
         "--sts_tasks", "STSBenchmark", "--suite_before_training", "false"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads((output_dir / "data_counts.json").read_text())
    assert [(s["name"], s["kind"], s["pairs_used"]) for s in counts["sources"]] == [
        ("data/SNLI[dev]", "nli", 96), ("stsb", "sts", 64)]
    assert counts["batches_per_epoch"] == {"data/SNLI[dev]": 6, "stsb": 4}
    card = (output_dir / "README.md").read_text()
    assert "| `stsb` | sts | 5749 | 5749 | 64 | 1.0 | – | 4 |" in card and "hard negatives" in card
