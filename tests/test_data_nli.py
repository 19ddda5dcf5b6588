"""NLI loading: label map, drops counted (never defaulted), clear errors naming file and row."""

import json

import pytest

from ese_trainer.data import DataError, load_nli_pairs
from ese_trainer.data.nli import validate_label_map

from .conftest import EMBEDDED_DATA


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def test_senteval_snli_layout_maps_every_label(tmp_path):
    dataset, counts = load_nli_pairs(str(EMBEDDED_DATA / "SNLI"), split="dev")
    labels = (EMBEDDED_DATA / "SNLI" / "labels.dev").read_text().split()
    assert counts.rows_read == len(labels) == 9842
    assert counts.kept == len(dataset) == 9842
    assert counts.label_counts == {name: labels.count(name) for name in ("entailment", "neutral", "contradiction")}
    by_premise_hypothesis = dict(zip(zip(dataset["sentence1"], dataset["sentence2"]), dataset["score"]))
    first = ("Two women are embracing while holding to go packages .",
             "The sisters are hugging goodbye while holding to go packages after just eating lunch .")
    assert by_premise_hypothesis[first] == 0.5  # labels.dev line 1 is neutral
    assert set(dataset["score"]) == {0.0, 0.5, 1.0}


def test_bad_labels_and_empty_texts_are_dropped_and_counted(tmp_path):
    rows = [
        {"premise": "A man plays.", "hypothesis": "A person plays.", "label": 0},
        {"premise": "A man plays.", "hypothesis": "A man sleeps.", "label": 2},
        {"premise": "A man plays.", "hypothesis": "A man plays chess.", "label": "neutral"},
        {"premise": "A man plays.", "hypothesis": "Nobody plays.", "label": -1},
        {"premise": "A man plays.", "hypothesis": "Nobody plays.", "label": 3},
        {"premise": "A man plays.", "hypothesis": "Nobody plays.", "label": "maybe"},
        {"premise": "   ", "hypothesis": "Nobody plays.", "label": 1},
        {"premise": "A man plays.", "hypothesis": "", "label": "entailment"},
    ]
    dataset, counts = load_nli_pairs(str(write_jsonl(tmp_path / "nli.jsonl", rows)))
    assert sorted(dataset["score"]) == [0.0, 0.5, 1.0]
    assert (counts.rows_read, counts.kept) == (8, 3)
    assert counts.dropped_unlabelled == 1
    assert counts.dropped_unknown_label == 2
    assert counts.unknown_labels == {"3": 1, "maybe": 1}
    assert counts.dropped_empty_text == 2


def test_custom_label_map_and_csv_columns(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("sentence1,sentence2,label\nA dog runs.,An animal runs.,entailment\nA dog runs.,A cat sleeps.,"
                    "contradiction\nA dog runs.,A dog runs fast.,neutral\n")
    dataset, counts = load_nli_pairs(str(path), label_map={"entailment": 0.9, "contradiction": 0.1})
    assert sorted(dataset["score"]) == [0.1, 0.9]
    assert counts.dropped_unknown_label == 1 and counts.unknown_labels == {"neutral": 1}


def test_max_samples_is_a_seeded_random_subset():
    first, _ = load_nli_pairs(str(EMBEDDED_DATA / "SNLI"), split="dev", max_samples=50, seed=1)
    again, _ = load_nli_pairs(str(EMBEDDED_DATA / "SNLI"), split="dev", max_samples=50, seed=1)
    other, counts = load_nli_pairs(str(EMBEDDED_DATA / "SNLI"), split="dev", max_samples=50, seed=2)
    assert first["sentence2"] == again["sentence2"] != other["sentence2"]
    assert counts.used_after_max_samples == 50 and counts.kept == 9842


def test_missing_column_names_the_file(tmp_path):
    path = write_jsonl(tmp_path / "nolabel.jsonl", [{"premise": "a", "hypothesis": "b"}])
    with pytest.raises(DataError, match=r"nolabel\.jsonl.*missing column.*label"):
        load_nli_pairs(str(path))
    path = write_jsonl(tmp_path / "notext.jsonl", [{"text": "a", "label": 0}])
    with pytest.raises(DataError, match=r"notext\.jsonl.*missing text columns"):
        load_nli_pairs(str(path))


def test_non_utf8_bytes_name_file_and_line(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes("premise\thypothesis\tlabel\nA café.\tA shop.\t0\n".encode() + b"Caf\xe9 au lait\tA drink.\t0\n")
    with pytest.raises(DataError, match=r"latin1\.tsv:3: not valid UTF-8"):
        load_nli_pairs(str(path))


def test_senteval_files_of_different_lengths(tmp_path):
    for name, lines in {"s1": ["a", "b"], "s2": ["c", "d"], "labels": ["entailment"]}.items():
        (tmp_path / f"{name}.train").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="differ in line count"):
        load_nli_pairs(str(tmp_path))
    (tmp_path / "s1.dev").write_bytes(b"caf\xe9\n")
    (tmp_path / "s2.dev").write_text("x\n")
    (tmp_path / "labels.dev").write_text("neutral\n")
    with pytest.raises(DataError, match=r"s1\.dev:1: not valid UTF-8"):
        load_nli_pairs(str(tmp_path), split="dev")


def test_all_rows_dropped_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "unlabelled.jsonl", [{"premise": "a", "hypothesis": "b", "label": -1}])
    with pytest.raises(DataError, match="no usable pairs"):
        load_nli_pairs(str(path))


@pytest.mark.parametrize("label_map", [{"entailment": 2.0}, {"maybe": 0.5}, {}])
def test_invalid_label_maps(label_map):
    with pytest.raises(ValueError):
        validate_label_map(label_map)


def test_hub_style_dataset_repo_with_class_label_ids(tmp_path):
    """A dataset repo laid out like stanfordnlp/snli, read through ``datasets.load_dataset``."""
    from datasets import ClassLabel, Dataset, Features, Value

    names = ClassLabel(names=["entailment", "neutral", "contradiction"])
    texts = {"premise": ["A dog runs."] * 3, "hypothesis": ["An animal runs.", "A dog runs home.", "A cat sits."]}
    text_features = {"premise": Value("string"), "hypothesis": Value("string")}
    repo = tmp_path / "snli_like"
    Dataset.from_dict({**texts, "label": [0, 1, 2]}, features=Features({**text_features, "label": names})).to_parquet(
        str(repo / "data" / "train-00000-of-00001.parquet"))
    Dataset.from_dict({**texts, "label": [0, -1, 2]}, features=Features({**text_features, "label": Value("int64")})
                      ).to_parquet(str(repo / "data" / "validation-00000-of-00001.parquet"))
    train, counts = load_nli_pairs(str(repo), split="train")
    assert sorted(zip(train["sentence2"], train["score"])) == [("A cat sits.", 0.0), ("A dog runs home.", 0.5),
                                                               ("An animal runs.", 1.0)]
    validation, counts = load_nli_pairs(str(repo), split="validation")
    assert counts.kept == 2 and counts.dropped_unlabelled == 1


def test_class_label_names_decide_the_score(tmp_path):
    """A 2-class dataset's id 1 is its own ``not_entailment``, not our neutral: unknown, dropped, counted."""
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"premise": Value("string"), "hypothesis": Value("string"),
                         "label": ClassLabel(names=["entailment", "not_entailment"])})
    repo = tmp_path / "rte_like"
    Dataset.from_dict({"premise": ["A dog runs.", "A dog runs."], "hypothesis": ["An animal runs.", "It rains."],
                       "label": [0, 1]}, features=features).to_parquet(str(repo / "data" / "train-0.parquet"))
    dataset, counts = load_nli_pairs(str(repo))
    assert dataset["score"] == [1.0] and counts.unknown_labels == {"not_entailment": 1}


def test_snli_dash_label_and_utf8_bom(tmp_path):
    path = tmp_path / "bom.tsv"
    path.write_bytes("\ufeffsentence1\tsentence2\tlabel\nA dog.\tA puppy.\tentailment\nA dog.\tA cat.\t-\n".encode())
    dataset, counts = load_nli_pairs(str(path))
    assert dataset["score"] == [1.0] and counts.dropped_unlabelled == 1
