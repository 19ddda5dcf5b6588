"""YAML + CLI parsing: overrides, unknown keys and wrong types named with their source."""

import logging

import pytest
from transformers import TrainingArguments

from ese_trainer.config.parsing import ConfigError, parse_config
from ese_trainer.data.arguments import DataArguments
from ese_trainer.losses.arguments import LossArguments
from ese_trainer.modeling.arguments import ModelArguments

from .conftest import REPO

GROUPS = (ModelArguments, DataArguments, LossArguments, TrainingArguments)


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_smoke_config_parses_with_defaults_and_overrides():
    model, data, loss, training = parse_config(
        ["--config", str(REPO / "configs" / "smoke.yaml"), "--learning_rate", "3e-5", "--ibn_w", "0.5"], GROUPS)
    assert model.model_name_or_path == "sentence-transformers/all-MiniLM-L6-v2"
    assert data.label_map == {"entailment": 1.0, "neutral": 0.5, "contradiction": 0.0}
    assert (loss.cosent_w, loss.ibn_w, loss.angle_w, loss.cosent_scale) == (1.0, 0.5, 1.0, 20.0)
    assert training.learning_rate == 3e-5 and training.load_best_model_at_end


def test_loss_defaults_are_the_weights_chosen_on_dev(tmp_path):
    _, _, loss, _ = parse_config(["--config", write(tmp_path, "output_dir: x\n")], GROUPS)
    assert (loss.cosent_w, loss.ibn_w, loss.angle_w) == (1.0, 10.0, 1.0)
    assert (loss.cosent_scale, loss.ibn_scale, loss.angle_scale) == (20.0, 20.0, 20.0)


def test_unknown_yaml_key_lists_valid_keys(tmp_path):
    path = write(tmp_path, "learning_rat: 1e-5\n")
    with pytest.raises(ConfigError) as error:
        parse_config(["--config", path], GROUPS)
    message = str(error.value)
    assert path in message and "'learning_rat'" in message and "did you mean 'learning_rate'" in message
    assert "Valid keys:" in message and "cosent_w" in message


def test_unknown_cli_key(tmp_path):
    with pytest.raises(ConfigError, match="command line: unknown key.*'cosin_w'"):
        parse_config(["--config", write(tmp_path, ""), "--cosin_w", "1"], GROUPS)


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.yaml.*learning_rate.*invalid float value: 'fast'"):
        parse_config(["--config", write(tmp_path, "learning_rate: fast\n")], GROUPS)


@pytest.mark.parametrize("text,pattern", [
    ("pooling: median\n", "unknown pooling 'median'"),
    ("label_map: {entailment: 3.0}\n", r"label_map\['entailment'\] = 3.0 is outside"),
    ("sts_tasks: [STS12, STS2000]\n", "unknown task"),
    ("cosent_w: 0\nibn_w: 0\nangle_w: 0\n", "nothing to train"),
])
def test_invalid_values(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_config(["--config", write(tmp_path, text)], GROUPS)


def test_max_train_samples_with_several_sources_is_refused_not_ignored():
    with pytest.raises(ConfigError, match="max_train_samples applies to the single train_dataset"):
        parse_config(["--config", str(REPO / "configs" / "smoke.yaml"), "--max_train_samples", "96"], GROUPS)


def test_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_config(["--config", write(tmp_path, "- a\n- b\n")], GROUPS)
    with pytest.raises(ConfigError, match="not found"):
        parse_config(["--config", str(tmp_path / "nope.yaml")], GROUPS)


@pytest.mark.parametrize("name", ["smoke", "smoke_snli", "bert_base_nli", "bge_base_nli"])
def test_shipped_configs_parse(name):
    # bf16 needs a GPU; the GPU configs are checked here for keys and types on CPU.
    model, data, _, training = parse_config(["--config", str(REPO / "configs" / f"{name}.yaml"), "--bf16", "false"],
                                            GROUPS)
    assert training.metric_for_best_model == "sts_dev_spearman" and training.load_best_model_at_end
    assert "test" not in data.sts_dev and model.model_name_or_path.count("/") <= 1


def test_help_lists_grouped_keys_with_their_help_and_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--config", str(REPO / "configs" / "smoke.yaml"), "--help"], GROUPS, prog="train_nli.py",
                     description="What the recipe does.")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: train_nli.py [--config FILE.yaml] [--key value ...]")
    assert "What the recipe does." in text
    sections = [line for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert sections[:5] == ["options:", "model:", "data:", "loss:", "TrainingArguments:"]
    assert "Weight of the in-batch term" in text and "--learning_rate" in text


def test_renamed_key_names_its_new_name(tmp_path):
    with pytest.raises(ConfigError, match="'eval_batch_size' was renamed to 'per_device_eval_batch_size'"):
        parse_config(["--config", write(tmp_path, "eval_batch_size: 64\n")], GROUPS)
    with pytest.raises(ConfigError, match="command line: 'eval_batch_size' was renamed"):
        parse_config(["--eval_batch_size", "64"], GROUPS)
    with pytest.raises(ConfigError, match="'ibn_positive_threshold' was renamed to 'positive_min_score'"):
        parse_config(["--ibn_positive_threshold", "0.9"], GROUPS)


def test_retired_key_says_what_replaced_it(tmp_path):
    with pytest.raises(ConfigError, match="'hard_negative_batches' was retired: every row keeps its hard negatives"):
        parse_config(["--config", write(tmp_path, "hard_negative_batches: true\n")], GROUPS)


@pytest.mark.parametrize("arguments,pattern", [
    (["--ibn_directions", "doc_to_doc"], "ibn_directions must be distinct values"),
    (["--ibn_hardness_mode", "hardest"], "ibn_hardness_mode must be one of"),
    (["--guide_margin_strategy", "percent"], "guide_margin_strategy must be one of"),
    (["--negative_max_score", "1.0"], "negative_max_score < positive_min_score"),
])
def test_bad_objective_settings_are_named(arguments, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_config(arguments, GROUPS)


def test_bf16_on_a_cpu_without_native_bf16_is_warned_about(tmp_path, caplog):
    from ese_trainer.training.run_start import cpu_computes_bf16, start_run, warn_emulated_bf16

    config = ["--config", str(REPO / "configs" / "smoke_snli.yaml"), "--output_dir", str(tmp_path / "out")]
    with caplog.at_level(logging.WARNING):
        args, _ = start_run([*config, "--bf16", "true", "--use_cpu", "true"])
    emulated = not cpu_computes_bf16()  # this machine's CPU decides which way the warning must go
    assert ("bf16 on a CPU without native bf16" in caplog.text) == emulated
    fp32, _ = start_run([*config, "--use_cpu", "true"])
    assert not warn_emulated_bf16(fp32.training)
