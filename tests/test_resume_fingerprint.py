"""What a checkpoint was trained on: every input that decides the batches or the objective changes the fingerprint and
is named; settings of memory, speed or the schedule's length do not; a resume on changed inputs stops naming them, or
(``resume_despite_changes``) goes on with them recorded."""

import json
import shutil

import pytest

from ese_trainer.config.parsing import ConfigError, parse_config
from ese_trainer.training.fingerprint import FINGERPRINT_FILE, fingerprint_changes, run_fingerprint, write_fingerprint
from ese_trainer.training.resume import resume_point
from ese_trainer.training.run_arguments import ARGUMENT_GROUPS, RunArguments

from .conftest import EMBEDDED_DATA, REPO


@pytest.fixture(scope="module")
def snli_copy(tmp_path_factory):
    return shutil.copytree(EMBEDDED_DATA / "SNLI", tmp_path_factory.mktemp("data") / "SNLI")


def fingerprint(snli, *overrides: str) -> dict:
    args = RunArguments(*parse_config(["--config", str(REPO / "configs" / "smoke_snli.yaml"), "--train_dataset",
                                       str(snli), "--output_dir", "unused", *overrides], ARGUMENT_GROUPS))
    return run_fingerprint(args.model, args.data, args.loss, args.moe, args.ese, args.training)


def changes(snli, *overrides: str) -> dict:
    return fingerprint_changes(fingerprint(snli), fingerprint(snli, *overrides))


@pytest.mark.parametrize("overrides,changed", [
    (["--per_device_train_batch_size", "16"], {"per_device_train_batch_size": {"checkpoint": 32, "now": 16}}),
    (["--gradient_accumulation_steps", "2"], {"gradient_accumulation_steps": {"checkpoint": 1, "now": 2}}),
    (["--label_map", '{"entailment": 1.0, "neutral": 0.6, "contradiction": 0.0}'],
     {"label_map.neutral": {"checkpoint": 0.5, "now": 0.6}, "sources[0].label_map.neutral": {"checkpoint": 0.5,
                                                                                              "now": 0.6}}),
    (["--max_train_samples", "500"], {"sources[0].max_samples": {"checkpoint": 1000, "now": 500}}),
    (["--seed", "7"], {"data_seed": {"checkpoint": 42, "now": 7}}),
    (["--ibn_w", "10"], {"objective.loss.ibn_w": {"checkpoint": 1.0, "now": 10.0}}),
    (["--negative_max_score", "0.5"], {"role_thresholds.negative_max_score": {"checkpoint": 0.0, "now": 0.5}}),
    (["--attention_dropout", "0"], {"model.attention_dropout": {"checkpoint": None, "now": 0.0}}),
    # the default anchors are left out, so checkpoints made before the key existed still resume
    (["--nli_anchors", "both"], {"sources[0].anchors": {"checkpoint": None, "now": "both"}}),
])
def test_each_input_that_decides_the_run_is_named(overrides, changed, snli_copy):
    assert changes(snli_copy, *overrides) == changed


@pytest.mark.parametrize("overrides", [
    ["--ibn_cache", "true", "--cache_minibatch_texts", "16"],  # GradCache: the same gradients in less memory
    ["--max_steps", "500", "--num_train_epochs", "2"],  # a longer schedule: extending a run is a resume
    ["--packed", "false", "--forward_chunks", "1"],  # the same embeddings, computed another way
    ["--compile_layers", "true"],  # the same layers, compiled
    ["--nli_anchors", "premise"],  # the default said out loud: a checkpoint from before the key still resumes
])
def test_memory_speed_and_length_are_not_changes(overrides, snli_copy):
    assert changes(snli_copy, *overrides) == {}


def test_a_changed_data_file_is_named_by_its_hash_and_size(snli_copy):
    before = fingerprint(snli_copy)
    labels = snli_copy / "labels.dev"
    original = labels.read_bytes()
    try:
        labels.write_bytes(original.replace(b"neutral", b"Neutral", 1))  # same size, other content
        same_size = fingerprint(snli_copy)
        labels.write_bytes(original + b"neutral\n")
        longer = fingerprint(snli_copy)
    finally:
        labels.write_bytes(original)
    assert list(fingerprint_changes(before, same_size)) == ["sources[0].files['labels.dev'].sha256"]
    assert list(fingerprint_changes(before, longer)) == ["sources[0].files['labels.dev'].bytes",
                                                         "sources[0].files['labels.dev'].sha256"]
    assert fingerprint_changes(before, fingerprint(snli_copy)) == {}


def _checkpoint(folder, step: int, recorded: dict | None):
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if recorded is not None:
        write_fingerprint(folder, recorded)
    return str(folder)


def test_a_resume_on_changed_inputs_stops_or_goes_on_recorded(snli_copy, tmp_path):
    recorded, now = fingerprint(snli_copy), fingerprint(snli_copy, "--per_device_train_batch_size", "16")
    same = _checkpoint(tmp_path / "same", 4, recorded)
    assert resume_point(same, recorded, allow_changes=False).changes == {}
    changed = _checkpoint(tmp_path / "changed", 6, recorded)
    with pytest.raises(ConfigError, match=r"changed was trained on other data or settings than this run: "
                                          r"per_device_train_batch_size 32 -> 16\. .*resume_despite_changes: true"):
        resume_point(changed, now, allow_changes=False)
    point = resume_point(changed, now, allow_changes=True)
    assert point.global_step == 6 and point.record() == {
        "checkpoint": changed, "global_step": 6,
        "changes": {"per_device_train_batch_size": {"checkpoint": 32, "now": 16}}}
    unrecorded = _checkpoint(tmp_path / "unrecorded", 2, None)
    with pytest.raises(ConfigError, match=rf"records no fingerprint \({FINGERPRINT_FILE}"):
        resume_point(unrecorded, now, allow_changes=False)
    (tmp_path / "same" / FINGERPRINT_FILE).write_text("{")
    with pytest.raises(ConfigError, match=rf"same/{FINGERPRINT_FILE} is unreadable"):
        resume_point(same, recorded, allow_changes=True)
