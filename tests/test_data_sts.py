"""STS loading: SentEval "all" setting, normalised gold, errors naming file and row."""

import pytest

from ese_trainer.data import DataError, load_sts_pairs, load_sts_task

from .conftest import EMBEDDED_DATA


def test_stsb_dev_scores_normalised():
    pairs = load_sts_pairs(str(EMBEDDED_DATA / "STS" / "STSBenchmark" / "sts-dev.csv"))
    assert len(pairs) == 1500
    assert min(pairs.scores) == 0.0 and max(pairs.scores) == 1.0
    assert pairs.scores[0] == pytest.approx(5.0 / 5) and pairs.sentences1[0] == "a man with a hard hat is dancing ."


def test_sts12_pools_subsets_and_skips_blank_gold(senteval_dir):
    pairs = load_sts_task("STS12", senteval_dir)
    # 750 + 750 + 459 + 750 + 399 pairs (STS.gs.ALL.txt is not counted again)
    assert len(pairs) == 3108
    year = senteval_dir / "STS" / "STS13-en-test"
    blank = sum(1 for line in (year / "STS.gs.FNWN.txt").read_text().splitlines() if not line.strip())
    blank += sum(1 for line in (year / "STS.gs.headlines.txt").read_text().splitlines() if not line.strip())
    blank += sum(1 for line in (year / "STS.gs.OnWN.txt").read_text().splitlines() if not line.strip())
    total = sum(len((year / f"STS.input.{s}.txt").read_text().splitlines()) for s in ("FNWN", "headlines", "OnWN"))
    assert len(load_sts_task("STS13", senteval_dir)) == total - blank


@pytest.mark.parametrize("task,size", [("STSBenchmark", 1379), ("SICKRelatedness", 4927)])
def test_test_sets(senteval_dir, task, size):
    pairs = load_sts_task(task, senteval_dir)
    assert len(pairs) == size and all(0.0 <= score <= 1.0 for score in pairs.scores)


@pytest.mark.parametrize("bad", ["6.0", "nan", "-0.5", "high"])
def test_bad_gold_names_file_and_row(tmp_path, bad):
    lines = (EMBEDDED_DATA / "STS" / "STSBenchmark" / "sts-dev.csv").read_text().splitlines()[:5]
    fields = lines[3].split("\t")
    fields[4] = bad
    lines[3] = "\t".join(fields)
    path = tmp_path / "sts-dev.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"sts-dev\.csv:4: gold score"):
        load_sts_pairs(str(path))


def test_empty_text_in_table_names_row(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("sentence1\tsentence2\tscore\nA dog.\tA puppy.\t4.2\n \tA cat.\t1.0\n")
    with pytest.raises(DataError, match=r"pairs\.tsv:3: empty text"):
        load_sts_pairs(str(path))


def test_missing_file_and_task(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_sts_pairs(str(tmp_path / "missing.csv"))
    with pytest.raises(DataError, match="unknown STS task"):
        load_sts_task("STS99", tmp_path)
    with pytest.raises(DataError, match="not found in data folder"):
        load_sts_task("STS12", tmp_path)


def test_mteb_style_dataset_repo(tmp_path):
    """The ``mteb/*-sts`` path (``datasets.load_dataset``) on a local repo with the same columns."""
    from datasets import Dataset

    repo = tmp_path / "stsb_like"
    Dataset.from_dict({"sentence1": ["A dog.", "A man."], "sentence2": ["A puppy.", "A car."], "score": [4.5, 0.2]}
                      ).to_parquet(str(repo / "data" / "test-00000-of-00001.parquet"))
    pairs = load_sts_pairs(str(repo), split="test")
    assert pairs.scores == pytest.approx([0.9, 0.04]) and pairs.sentences2 == ["A puppy.", "A car."]
    Dataset.from_dict({"sentence1": ["A dog."], "sentence2": ["A puppy."], "score": [5.5]}).to_parquet(
        str(repo / "data" / "validation-00000-of-00001.parquet"))
    with pytest.raises(DataError, match=r"stsb_like\[validation\]:0: gold score 5.5 is outside"):
        load_sts_pairs(str(repo), split="validation")
