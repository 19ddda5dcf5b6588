"""STS loading: SentEval "all" setting, normalised gold, errors naming file and row."""

import pytest

from ese_trainer.data import DataError, load_sts_pairs, load_sts_task

from .conftest import EMBEDDED_DATA


def test_stsb_dev_scores_normalised():
    pairs = load_sts_pairs(str(EMBEDDED_DATA / "STS" / "STSBenchmark" / "sts-dev.csv"))
    assert len(pairs) == 1500
    assert min(pairs.scores) == 0.0 and max(pairs.scores) == 1.0
    assert pairs.scores[0] == pytest.approx(5.0 / 5) and pairs.sentences1[0] == "a man with a hard hat is dancing ."


def test_sts12_pools_subsets_and_skips_blank_gold():
    pairs = load_sts_task("STS12")
    # 750 + 750 + 459 + 750 + 399 pairs (STS.gs.ALL.txt is not counted again)
    assert len(pairs) == 3108
    year = EMBEDDED_DATA / "STS" / "STS13-en-test"
    blank = sum(1 for line in (year / "STS.gs.FNWN.txt").read_text().splitlines() if not line.strip())
    blank += sum(1 for line in (year / "STS.gs.headlines.txt").read_text().splitlines() if not line.strip())
    blank += sum(1 for line in (year / "STS.gs.OnWN.txt").read_text().splitlines() if not line.strip())
    total = sum(len((year / f"STS.input.{s}.txt").read_text().splitlines()) for s in ("FNWN", "headlines", "OnWN"))
    assert len(load_sts_task("STS13")) == total - blank


@pytest.mark.parametrize("task,size", [("STSBenchmark", 1379), ("SICKRelatedness", 4927)])
def test_test_sets(task, size):
    pairs = load_sts_task(task)
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


STSB_DEV = EMBEDDED_DATA / "STS" / "STSBenchmark" / "sts-dev.csv"


@pytest.mark.parametrize("name", ["sts-dev.csv", "my_pairs.txt", "dev.tsv", "stsb"])
def test_stsb_layout_recognised_by_content_whatever_the_name(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(STSB_DEV.read_bytes())
    pairs = load_sts_pairs(str(path))
    assert len(pairs) == 1500 and pairs.sentences1[0] == "a man with a hard hat is dancing ."


@pytest.mark.parametrize("name", ["stsb_dev.txt", "pairs.tsv"])
@pytest.mark.parametrize("bad", ["6.0", "nan", "high"])
def test_bad_gold_in_stsb_layout_named_whatever_the_name(tmp_path, name, bad):
    lines = STSB_DEV.read_text().splitlines()[:5]
    fields = lines[2].split("\t")
    fields[4] = bad
    lines[2] = "\t".join(fields)
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{name.replace('.', '[.]')}:3: gold score '{bad}'"):
        load_sts_pairs(str(path))


def test_sick_recognised_by_header_and_bad_score_named(tmp_path):
    sick = EMBEDDED_DATA / "SICK" / "SICK_test_annotated.txt"
    path = tmp_path / "relatedness.tsv"
    path.write_bytes(sick.read_bytes())
    assert len(load_sts_pairs(str(path))) == 4927
    lines = sick.read_text().splitlines()[:4]
    header = lines[0].split("\t")
    fields = lines[3].split("\t")
    fields[header.index("relatedness_score")] = "nan"
    lines[3] = "\t".join(fields)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"relatedness\.tsv:4: gold score 'nan' is outside"):
        load_sts_pairs(str(path))


@pytest.mark.parametrize("name,text", [
    ("pairs.csv", "sentence1,sentence2,score\nA dog.,A puppy.,4.2\nA man.,A car.,7\n"),
    ("pairs.txt", "sentence1\tsentence2\tscore\nA dog.\tA puppy.\t4.2\nA man.\tA car.\t7\n"),
    ("pairs.jsonl", '{"sentence1": "A dog.", "sentence2": "A puppy.", "score": 4.2}\n'
                    '{"sentence1": "A man.", "sentence2": "A car.", "score": 7}\n'),
])
def test_tables_with_headers_checked_row_by_row(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=rf"{name.replace('.', '[.]')}:[23]: gold score '?7'? is outside"):
        load_sts_pairs(str(path))
    path.write_text(text.replace("7", "0.5"))
    assert load_sts_pairs(str(path)).scores == pytest.approx([0.84, 0.1])


def test_unrecognised_layout_says_what_it_expects(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("text_a,text_b,label\nA dog.,A puppy.,4\n")
    with pytest.raises(DataError, match=r"pairs\.csv: not a recognised STS file.*sentence1, sentence2, score"):
        load_sts_pairs(str(path))


def test_whole_suite_is_embedded():
    """Every task of the suite reads from the repository's own data/ folder (the default)."""
    from ese_trainer.data import STS_TASKS

    sizes = {task: len(load_sts_task(task)) for task in STS_TASKS}
    assert sizes == {"STS12": 3108, "STS13": 1500, "STS14": 3750, "STS15": 3000, "STS16": 1186,
                     "STSBenchmark": 1379, "SICKRelatedness": 4927}
