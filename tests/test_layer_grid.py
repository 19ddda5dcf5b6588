"""ESE's layer x dim grid, layer truncation and slice export, on the real all-MiniLM-L6-v2 and real STS-B test."""

import copy
import json
import math
import os
import runpy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer

from ese_trainer.config.parsing import ConfigError
from ese_trainer.data import STSPairs, load_sts_pairs
from ese_trainer.evaluation.layer_grid import encode_time_per_depth, evaluate_layer_dim_grid
from ese_trainer.evaluation.sts import evaluate_sts
from ese_trainer.modeling.pooling import pool
from ese_trainer.modeling.slicing import check_dims, check_layers, truncate_layers
from ese_trainer.release.export import export_slice, saved_pooling

from .conftest import EMBEDDED_DATA, REPO

STSB_TEST = EMBEDDED_DATA / "STS" / "STSBenchmark" / "sts-test.csv"
PAIRS = 300
BATCH_SIZE = 64


@pytest.fixture(scope="module")
def stsb_pairs() -> STSPairs:
    full = load_sts_pairs(str(STSB_TEST), name="STSBenchmark")
    return STSPairs("sub", full.sentences1[:PAIRS], full.sentences2[:PAIRS], full.scores[:PAIRS])


@pytest.fixture(scope="module")
def grid_and_forwards(minilm, tokenizer, stsb_pairs):
    """The grid on 300 pairs, with the number of model forwards it took (observed with a forward hook)."""
    calls = []
    handle = minilm.register_forward_hook(lambda module, inputs, output: calls.append(len(output.hidden_states)))
    try:
        grid = evaluate_layer_dim_grid(minilm, tokenizer, {"sub": stsb_pairs}, "mean", [3, 6], [64, 384],
                                       batch_size=BATCH_SIZE, show_progress=False)
    finally:
        handle.remove()
    return grid, calls


@torch.no_grad()
def layer_embeddings(model, tokenizer, sentences, layer, dim, pooling="mean", batch_size=32):
    """Straightforward reference: padded batches in input order, hidden_states[layer], pool, first dim dims."""
    pooled = []
    for start in range(0, len(sentences), batch_size):
        batch = tokenizer(sentences[start:start + batch_size], padding=True, truncation=True, max_length=128,
                          return_tensors="pt")
        states = model(**batch, output_hidden_states=True).hidden_states
        pooled.append(pool(states[layer], batch["attention_mask"], pooling)[:, :dim])
    return torch.cat(pooled)


def test_grid_layout_and_full_cell_equals_evaluate_sts(grid_and_forwards, minilm, tokenizer, stsb_pairs):
    grid, _ = grid_and_forwards
    assert grid["layers"] == [3, 6] and grid["dims"] == [64, 384]
    assert set(grid["tasks"]["sub"]) == {"3", "6"} and set(grid["tasks"]["sub"]["3"]) == {"64", "384"}
    assert grid["avg"] == grid["tasks"]["sub"]  # one task: the average is that task's grid
    reference = evaluate_sts(minilm, tokenizer, {"sub": stsb_pairs}, "mean", batch_size=BATCH_SIZE,
                             show_progress=False)["sub"]
    assert grid["tasks"]["sub"]["6"]["384"] == pytest.approx(reference, abs=1e-9)
    cells = [score for row in grid["avg"].values() for score in row.values()]
    assert all(0 < score < 100 for score in cells)
    assert grid["avg"]["6"]["384"] > grid["avg"]["3"]["384"] > grid["avg"]["3"]["64"]


def test_lower_cell_matches_an_independent_computation(grid_and_forwards, minilm, tokenizer, stsb_pairs):
    grid, _ = grid_and_forwards
    first, second = (layer_embeddings(minilm, tokenizer, side, layer=3, dim=64)
                     for side in (stsb_pairs.sentences1, stsb_pairs.sentences2))
    assert first.shape == (PAIRS, 64)
    expected = spearmanr(F.cosine_similarity(first, second).tolist(), stsb_pairs.scores).statistic * 100
    # other padding changes float rounding, which may swap a few near-tied ranks: 3e-4 here, cells differ by >1
    assert grid["tasks"]["sub"]["3"]["64"] == pytest.approx(expected, abs=5e-3)


def test_one_forward_per_batch_with_all_hidden_states(grid_and_forwards, stsb_pairs):
    _, calls = grid_and_forwards
    unique = len(set(stsb_pairs.sentences1 + stsb_pairs.sentences2))
    assert len(calls) == math.ceil(unique / BATCH_SIZE)  # not one encoding per (layer, dim) cell
    assert set(calls) == {7}  # embedding output + 6 layers, from each single forward


def test_truncation_runs_only_the_first_layers_and_matches_the_full_model(minilm, tokenizer):
    truncated = truncate_layers(copy.deepcopy(minilm), 3)
    assert len(truncated.encoder.layer) == 3 and truncated.config.num_hidden_layers == 3
    assert len(minilm.encoder.layer) == 6 and minilm.config.num_hidden_layers == 6  # the copy was cut, not the model
    calls = []
    handles = [layer.register_forward_hook(lambda *_: calls.append(1)) for layer in truncated.encoder.layer]
    batch = tokenizer(["A man is playing a guitar.", "Rain."], padding=True, return_tensors="pt")
    with torch.no_grad():
        short = truncated(**batch, output_hidden_states=True)
        full = minilm(**batch, output_hidden_states=True)
    for handle in handles:
        handle.remove()
    assert len(calls) == 3 and len(short.hidden_states) == 4
    torch.testing.assert_close(short.last_hidden_state, full.hidden_states[3], atol=1e-5, rtol=0)


def test_truncation_filters_a_list_of_moe_layers(minilm):
    model = copy.deepcopy(minilm)
    model.config.moe_layers = [0, 2, 3, 5]
    assert truncate_layers(model, 3).config.moe_layers == [0, 2]
    patterned = copy.deepcopy(minilm)
    patterned.config.moe_layers = "every_2"
    assert truncate_layers(patterned, 4).config.moe_layers == "every_2"  # positional pattern: still valid
    assert not hasattr(minilm.config, "moe_layers")


def test_layer_and_dim_parsing():
    assert check_layers("all", 6) == check_layers(["all"], 6) == [1, 2, 3, 4, 5, 6]
    assert check_layers(["6", "2"], 6) == [2, 6] and check_layers(None, 6) == [6]
    assert check_dims([32, 384], 384) == [32, 384] and check_dims(None, 384) == [384]


@pytest.mark.parametrize(("layers", "message"), [
    ([0], r"layers: 0 is outside 1\.\.6.*embedding output"),
    ([7], r"layers: 7 is outside 1\.\.6"),
    (["x"], r"layers: 'x' is not a layer number or 'all'"),
    (["2.5"], r"layers: '2\.5' is not a layer number"),
    ([2, 2], r"layers: 2 is given twice"),
    ([], r"layers: none given"),
])
def test_bad_layers_are_refused(layers, message):
    with pytest.raises(ValueError, match=message):
        check_layers(layers, 6)


@pytest.mark.parametrize(("dims", "message"), [
    ([384, 64], r"dims must be strictly ascending, got \[384, 64\]"),
    ([64, 64], r"dims must be strictly ascending"),
    ([0], r"dims: 0 is outside 1\.\.384"),
    ([385], r"dims: 385 is outside 1\.\.384"),
    ([], r"dims: none given"),
])
def test_bad_dims_are_refused(dims, message):
    with pytest.raises(ValueError, match=message):
        check_dims(dims, 384)


def test_bad_truncation_and_grid_arguments_are_refused(minilm, tokenizer, stsb_pairs):
    for depth in (0, 7):
        with pytest.raises(ValueError, match=rf"cannot truncate to {depth} layers: the model has layers 1\.\.6"):
            truncate_layers(copy.deepcopy(minilm), depth)
    with pytest.raises(ValueError, match="dims must be strictly ascending"):
        evaluate_layer_dim_grid(minilm, tokenizer, {"sub": stsb_pairs}, "mean", [6], [384, 64], show_progress=False)


def test_encode_time_per_depth_leaves_the_model_whole(minilm, tokenizer, stsb_pairs):
    seconds = encode_time_per_depth(minilm, tokenizer, stsb_pairs.sentences1[:64], "mean", [1, 6], 128, 32,
                                    repeats=1)
    assert set(seconds) == {"1", "6"} and all(value > 0 for value in seconds.values())
    assert len(minilm.encoder.layer) == 6


@pytest.mark.parametrize("pooling", ["mean", "cls_avg"])
def test_export_slice_round_trips_through_sentence_transformers(minilm, tokenizer, stsb_pairs, tmp_path, pooling):
    export_slice(minilm, tokenizer, tmp_path, pooling, layer=3, dim=128, max_seq_length=128)
    assert len(minilm.encoder.layer) == 6  # the model object is copied, not cut
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as weights:
        saved_layers = {int(key.split("encoder.layer.")[1].split(".")[0]) for key in weights.keys()
                        if "encoder.layer." in key}
    assert saved_layers == {0, 1, 2}
    assert json.loads((tmp_path / "config.json").read_text())["num_hidden_layers"] == 3
    assert json.loads((tmp_path / "config_sentence_transformers.json").read_text())["truncate_dim"] == 128
    assert saved_pooling(tmp_path) == pooling
    sentences = stsb_pairs.sentences1[:100]
    loaded = SentenceTransformer(str(tmp_path), device="cpu")
    theirs = loaded.encode(sentences, convert_to_tensor=True).cpu()
    ours = layer_embeddings(minilm, tokenizer, sentences, layer=3, dim=128, pooling=pooling)
    assert theirs.shape == ours.shape == (100, 128)
    assert F.cosine_similarity(ours, theirs).min() >= 0.99999


def test_export_slice_cli_uses_the_saved_pooling_and_checks_first(minilm_path, tmp_path):
    run = runpy.run_path(str(REPO / "recipes" / "export_slice.py"))["run"]
    output = tmp_path / "slice"
    run(["--model_name_or_path", minilm_path, "--layer", "2", "--dim", "64", "--output_dir", str(output)])
    assert saved_pooling(output) == "mean"
    assert SentenceTransformer(str(output), device="cpu").encode(["Rain."]).shape == (1, 64)
    with pytest.raises(ConfigError, match=r"layers: 7 is outside 1\.\.6"):
        run(["--model_name_or_path", minilm_path, "--layer", "7", "--dim", "64", "--output_dir", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def run_evaluate_sts(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, str(REPO / "recipes" / "evaluate_sts.py"),
                           "--model_name_or_path", "sentence-transformers/all-MiniLM-L6-v2", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_evaluate_sts_cli_writes_the_grid(tmp_path):
    result = run_evaluate_sts("--layers", "2", "6", "--dims", "64", "384", "--sts_tasks", "STSBenchmark",
                              "--sts_data_dir", str(EMBEDDED_DATA), "--time_sentences", "128",
                              "--output_file", str(tmp_path / "grid.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    grid = json.loads((tmp_path / "grid.json").read_text())
    assert grid["layers"] == [2, 6] and grid["dims"] == [64, 384] and grid["pooling"] == "mean"
    assert round(grid["avg"]["6"]["384"], 2) == 82.03  # the published full-model score (see test_evaluation)
    assert all(0 < score < 100 for row in grid["avg"].values() for score in row.values())
    assert grid["avg"]["6"]["384"] > grid["avg"]["2"]["384"] and grid["avg"]["6"]["384"] > grid["avg"]["6"]["64"]
    assert set(grid["encode_seconds"]) == {"2", "6"} and all(value > 0 for value in grid["encode_seconds"].values())
    table = (tmp_path / "grid.md").read_text()
    assert "| layer \\ dim | 64 | 384 | encode s | speed-up |" in table
    assert f"| 6 | {grid['avg']['6']['64']:.2f} | 82.03 |" in table and table.count("\n| 2 |") == 1
    assert "| 6 | " in result.stdout and "82.03" in result.stdout
    png = (tmp_path / "grid.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_evaluate_sts_cli_refuses_bad_dims_before_loading_data(tmp_path):
    # An empty data folder: reaching data loading (let alone encoding) would fail with a DataError instead.
    result = run_evaluate_sts("--dims", "384", "64", "--sts_tasks", "STSBenchmark", "--sts_data_dir", str(tmp_path),
                              "--output_file", str(tmp_path / "grid.json"))
    assert result.returncode == 2
    assert "error: command line: dims must be strictly ascending, got [384, 64]" in result.stderr
    assert "not found" not in result.stderr and not (tmp_path / "grid.json").exists()
