"""YAML config + ``--key value`` overrides -> typed dataclasses, with errors that name the key and file."""

from __future__ import annotations

import argparse
import difflib
import json
from dataclasses import fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from transformers import HfArgumentParser


class ConfigError(ValueError):
    """A config file or command line that cannot be used; the message names the key and its source."""


# Keys that were renamed: the old name is refused with a message naming the new one.
RENAMED_KEYS = {
    "eval_batch_size": "per_device_eval_batch_size",
    "cosine_w": "cosent_w",  # the term is CoSENT (sentence-transformers' "cosine" loss is an MSE)
    "cosine_scale": "cosent_scale",
    # ESE's learned target heads, not the MoE encoder
    "ese_moe_num_experts": "ese_head_num_experts",
    "ese_moe_expert_hidden": "ese_head_expert_hidden",
    "ese_moe_top_k": "ese_head_top_k",
    "ese_moe_aux_loss_coef": "ese_head_balance_weight",
    "ese_moe_learning_rate": "ese_head_learning_rate",
    # grouped rows: a text's role (positive, hard negative, ranking pair only) follows its score
    "ibn_positive_threshold": "positive_min_score",
    "cache_minibatch_size": "cache_minibatch_texts",  # GradCache splits the batch's texts, not pairs
}
# Keys that were retired: the old name is refused with what replaced it.
RETIRED_KEYS = {
    "hard_negative_batches": "every row keeps its hard negatives (an NLI premise's contradiction) with its anchor",
}
SECTIONS = ("moe", "ese")


def display_key(key: str) -> str:
    """A key as the user writes it: ``ese_head_top_k`` is ``ese.head_top_k`` (the ``ese:`` section's key)."""
    section = key.split("_", 1)[0]
    return f"{section}.{key.split('_', 1)[1]}" if section in SECTIONS and "_" in key else key
HELP_FLAGS = ("-h", "--help")


class _RaisingArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` that raises :class:`ConfigError` instead of exiting, and lists every dataclass's
    fields under a heading of its own in ``--help``."""

    def error(self, message: str) -> None:  # argparse would print usage and exit(2)
        raise ConfigError(message)

    def _add_dataclass_arguments(self, dtype) -> None:
        # A group per dataclass (TrainingArguments too), so --help reads section by section.
        heading = getattr(dtype, "_argument_group_name", dtype.__name__)
        summary = " ".join((dtype.__doc__ or "").strip().split("\n\n")[0].split())
        generated = summary.startswith(f"{dtype.__name__}(")  # dataclasses' default __doc__ is the signature
        group = self.add_argument_group(heading, None if generated else summary or None)
        hints = get_type_hints(dtype)
        for dataclass_field in fields(dtype):
            if dataclass_field.init:
                dataclass_field.type = hints[dataclass_field.name]
                self._parse_dataclass_field(group, dataclass_field)


def valid_keys(dataclass_types: tuple[type, ...]) -> list[str]:
    return sorted({f.name for dataclass_type in dataclass_types for f in fields(dataclass_type) if f.init})


def _unknown_key_error(keys: list[str], source: str, valid: list[str]) -> ConfigError:
    renamed = [key for key in keys if RENAMED_KEYS.get(key) in valid]
    retired = [key for key in keys if key in RETIRED_KEYS]
    if renamed or retired:
        return ConfigError(f"{source}: " + "; ".join(
            [f"{display_key(key)!r} was renamed to {display_key(RENAMED_KEYS[key])!r}" for key in renamed]
            + [f"{display_key(key)!r} was retired: {RETIRED_KEYS[key]}" for key in retired]))
    hints = []
    for key in keys:
        close = difflib.get_close_matches(key, valid, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ConfigError(f"{source}: unknown key(s) {', '.join(hints)}. Valid keys: {', '.join(valid)}")


def _to_argv(values: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            argv += [f"--{key}", str(value).lower()]
        elif isinstance(value, (list, tuple)):
            argv += [f"--{key}", *(json.dumps(v) if isinstance(v, (dict, list)) else str(v) for v in value)]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def _split_cli(argv: list[str]) -> tuple[str | None, list[str], list[str]]:
    """Returns (config path, override keys, override argv) from ``--config X --key value ...``."""
    config_path, keys, rest = None, [], []
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--config" or token.startswith("--config="):
            if "=" in token:
                config_path = token.split("=", 1)[1]
            elif index + 1 < len(argv):
                config_path = argv[index + 1]
                index += 1
            else:
                raise ConfigError("--config needs a file path")
        else:
            if token.startswith("--"):
                key = token[2:].split("=", 1)[0]
                # --moe.num_experts 4 == --moe_num_experts 4 (the YAML section moe: {num_experts: 4})
                token = "--" + key.replace(".", "_") + token[2 + len(key):]
                keys.append(key.replace(".", "_"))
            rest.append(token)
        index += 1
    return config_path, keys, rest


def flatten_sections(values: dict[str, Any], valid: list[str], source: str) -> dict[str, Any]:
    """``moe: {num_experts: 4}`` -> ``moe_num_experts: 4`` for the sectioned argument groups (``moe``, ``ese``)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and key not in valid and any(name.startswith(f"{key}_") for name in valid):
            for sub_key, sub_value in value.items():
                flat[f"{key}_{sub_key}"] = sub_value
        elif isinstance(value, dict) and key in SECTIONS:
            raise ConfigError(f"{source}: section {key!r} is not used by this script")
        else:
            flat[key] = value
    return flat


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at the top level")
    return values


def help_text(dataclass_types: tuple[type, ...], prog: str | None = None, description: str | None = None) -> str:
    """The ``--help`` text: usage, ``description`` and every key with its help, grouped by dataclass."""
    parser = _RaisingArgumentParser(dataclass_types, prog=prog, description=description,
                                    usage="%(prog)s [--config FILE.yaml] [--key value ...]",
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of key: value pairs; command-line keys "
                        "override it. Sections (moe:, ese:) nest keys: moe: {num_experts: 4} is --moe.num_experts 4.")
    return parser.format_help()


def parse_config(argv: list[str], dataclass_types: tuple[type, ...], prog: str | None = None,
                 description: str | None = None) -> tuple[Any, ...]:
    """Parse ``--config file.yaml [--key value ...]`` into one instance of each dataclass type.

    Command-line values override the file's. Unknown keys, wrong types and invalid values raise
    :class:`ConfigError` naming the key and where it came from. ``-h``/``--help`` prints
    :func:`help_text` and exits 0.
    """
    if any(token in HELP_FLAGS for token in argv):
        print(help_text(dataclass_types, prog, description))
        raise SystemExit(0)
    config_path, override_keys, override_argv = _split_cli(argv)
    valid = valid_keys(dataclass_types)
    source = str(config_path) if config_path else "command line"
    file_values = flatten_sections(load_yaml_config(config_path), valid, source) if config_path else {}
    unknown = [key for key in file_values if key not in valid]
    if unknown:
        raise _unknown_key_error(unknown, str(config_path), valid)
    unknown = [key.replace("-", "_") for key in override_keys if key.replace("-", "_") not in valid]
    if unknown:
        raise _unknown_key_error(unknown, "command line", valid)
    parser = _RaisingArgumentParser(dataclass_types)
    try:
        return tuple(parser.parse_args_into_dataclasses(args=_to_argv(file_values) + override_argv))
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{source}: {error}") from None
