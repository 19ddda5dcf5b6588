"""YAML config + ``--key value`` overrides -> typed dataclasses, with errors that name the key and file."""

from __future__ import annotations

import difflib
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser


class ConfigError(ValueError):
    """A config file or command line that cannot be used; the message names the key and its source."""


class _RaisingArgumentParser(HfArgumentParser):
    def error(self, message: str) -> None:  # argparse would print usage and exit(2)
        raise ConfigError(message)


def valid_keys(dataclass_types: tuple[type, ...]) -> list[str]:
    return sorted({f.name for dataclass_type in dataclass_types for f in fields(dataclass_type) if f.init})


def _unknown_key_error(keys: list[str], source: str, valid: list[str]) -> ConfigError:
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
        elif isinstance(value, dict) and key in ("moe", "ese"):
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


def parse_config(argv: list[str], dataclass_types: tuple[type, ...]) -> tuple[Any, ...]:
    """Parse ``--config file.yaml [--key value ...]`` into one instance of each dataclass type.

    Command-line values override the file's. Unknown keys, wrong types and invalid values raise
    :class:`ConfigError` naming the key and where it came from.
    """
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
