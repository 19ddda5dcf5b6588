"""What a run trains on, recorded in every checkpoint and compared when a run resumes from it.

A resumed Trainer skips the batches the checkpoint already trained on by their count (``skip_first_batches``), so it
continues the same run only when the batches are drawn the same way and the optimizer state belongs to the same
objective. The fingerprint holds what decides that: the sources and their files (size and SHA-256 of every file a
local source reads), the label map, role thresholds, sampling and data seed, the world size, per-device batch and
gradient accumulation, the model's text encoding (start model, pooling, length, dimension, attention dropout) and the
objective's settings (loss, ESE and MoE keys). Left out: what changes only memory or speed (GradCache, packing,
forward chunks, compiled layers), and the length of the schedule (``max_steps``, epochs): extending a run is a resume.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from ese_trainer.config.parsing import ConfigError
from ese_trainer.data.arguments import DataArguments
from ese_trainer.data.sources import TrainSource
from ese_trainer.errors import describe_error
from ese_trainer.ese.arguments import ESEArguments
from ese_trainer.losses.arguments import LossArguments
from ese_trainer.modeling.arguments import ModelArguments, MoEArguments

FINGERPRINT_FILE = "run_fingerprint.json"  # in every checkpoint, written before its weights
MEMORY_ONLY_KEYS = ("ibn_cache", "cache_minibatch_texts")  # GradCache: the same gradients in less memory
HASH_CHUNK = 1 << 20


def file_record(path: Path) -> dict[str, Any]:
    """``path``'s size in bytes and SHA-256."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def source_files(source: str) -> dict[str, dict] | None:
    """Every file a local source can read (the file, or each file under the folder but hidden ones), by path
    relative to the source, with :func:`file_record`; None for a Hub dataset (its id and split are recorded)."""
    path = Path(source)
    if path.is_file():
        return {path.name: file_record(path)}
    if not path.is_dir():
        return None
    return {str(file.relative_to(path)): file_record(file) for file in sorted(path.rglob("*"))
            if file.is_file() and not any(part.startswith(".") for part in file.relative_to(path).parts)}


def source_fingerprint(source: TrainSource) -> dict[str, Any]:
    """A source's keys and files; ``anchors`` only where it is not the premise (or unset), so a checkpoint made
    before the key existed still resumes."""
    keys = {key: value for key, value in asdict(source).items()
            if not (key == "anchors" and value in (None, "premise"))}
    return {**keys, "files": source_files(source.source)}


def _plain(value: Any) -> Any:
    """JSON's view of ``value`` (tuples as lists, other objects as text): what a recorded fingerprint reads back."""
    return json.loads(json.dumps(value, default=str))


def run_fingerprint(model: ModelArguments, data: DataArguments, loss: LossArguments, moe: MoEArguments,
                    ese: ESEArguments, training: TrainingArguments) -> dict[str, Any]:
    """What this run trains on (see the module's docstring)."""
    objective = {key: value for key, value in asdict(loss).items() if key not in MEMORY_ONLY_KEYS}
    return _plain({
        "sources": [source_fingerprint(source) for source in data.train_sources()],
        "label_map": data.label_map,
        "role_thresholds": {"positive_min_score": data.positive_min_score,
                            "negative_max_score": data.negative_max_score},
        "train_sampling": data.train_sampling,
        "data_seed": training.data_seed if training.data_seed is not None else training.seed,
        "world_size": training.world_size,
        "per_device_train_batch_size": training.per_device_train_batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "model": {"model_name_or_path": model.model_name_or_path, "pooling": model.pooling,
                  "max_seq_length": model.max_seq_length, "embedding_dim": model.embedding_dim,
                  "attention_dropout": model.attention_dropout,
                  **({"fast_dropout": True} if model.fast_dropout else {})},  # another random stream; absent: off
        "objective": {"loss": objective, "ese": ese_fingerprint(ese), "moe": asdict(moe)},
    })


def ese_fingerprint(ese: ESEArguments) -> dict[str, Any]:
    """The ``ese:`` keys with every setting's value, the other schedule's defaults included: the resolved keys
    leave those unset, and a checkpoint saved when every key was resolved still resumes."""
    if not ese.ese_enabled:
        return asdict(ese)
    return {"ese_enabled": True, **{f"ese_{name}": value for name, value in asdict(ese.settings()).items()}}


def write_fingerprint(folder: str | Path, fingerprint: dict) -> Path:
    """``folder/run_fingerprint.json``."""
    path = Path(folder) / FINGERPRINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fingerprint, indent=1) + "\n")
    return path


def read_fingerprint(folder: str | Path) -> dict | None:
    """The fingerprint a checkpoint recorded, or None when it has none; an unreadable one is a ConfigError naming
    the file."""
    path = Path(folder) / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        fingerprint = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path} is unreadable ({describe_error(error)})") from None
    if not isinstance(fingerprint, dict):
        raise ConfigError(f"{path} is unreadable (not a JSON object)")
    return fingerprint


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """``value``'s leaves by path: ``sources[0].files['s1.dev'].sha256``."""
    if isinstance(value, dict) and value:
        flat = {}
        for key, item in value.items():
            name = f"{prefix}.{key}" if key.isidentifier() else f"{prefix}[{key!r}]"
            flat.update(_flat(item, name.lstrip(".")))
        return flat
    if isinstance(value, list) and value and any(isinstance(item, (dict, list)) for item in value):
        flat = {}
        for index, item in enumerate(value):
            flat.update(_flat(item, f"{prefix}[{index}]"))
        return flat
    return {prefix: value}


def fingerprint_changes(recorded: dict | None, current: dict) -> dict[str, dict]:
    """What differs between the fingerprint a checkpoint ``recorded`` (None: it has none) and ``current``, by
    setting: ``{"checkpoint": value, "now": value}`` (None where a setting is absent on one side)."""
    if recorded is None:
        return {"fingerprint": {"checkpoint": None, "now": f"recorded in {FINGERPRINT_FILE}"}}
    old, new = _flat(recorded), _flat(current)
    return {key: {"checkpoint": old.get(key), "now": new.get(key)} for key in dict.fromkeys([*old, *new])
            if old.get(key) != new.get(key)}


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:20] + "…"


def describe_changes(changes: dict[str, dict], limit: int = 8) -> str:
    """The changes in one line: ``per_device_train_batch_size 8 -> 4; sources[0].files['s1.dev'].sha256 …``."""
    if "fingerprint" in changes and changes["fingerprint"]["checkpoint"] is None:
        return f"the checkpoint records no fingerprint ({FINGERPRINT_FILE}: saved by an older version or elsewhere)"
    parts = [f"{key} {_short(change['checkpoint'])} -> {_short(change['now'])}"
             for key, change in list(changes.items())[:limit]]
    more = f"; and {len(changes) - limit} more" if len(changes) > limit else ""
    return "; ".join(parts) + more
