"""Where a run resumes: a complete checkpoint (an incomplete one skipped under ``last``, refused when named, by the
file), trained on what this run trains on (:mod:`~ese_trainer.training.fingerprint`) or refused naming the change.

A checkpoint is complete when it holds everything the Trainer restores (transformers ``Trainer._save_checkpoint`` /
``_load_from_checkpoint`` / ``_load_optimizer_and_scheduler`` / ``_load_rng_state``): the weights, the optimizer and
scheduler states, ``trainer_state.json`` and the RNG state of every process that saved it. transformers itself loads
the optimizer and scheduler only when both files exist and skips a missing RNG file with an info line, so a partial
checkpoint would resume with fresh Adam moments, a restarted warm-up or other random streams, without a word; a
broken file would fail only after the model and data have loaded. Layouts: plain and DDP (``model.safetensors``,
``optimizer.pt``), FSDP (accelerate's ``pytorch_model_fsdp*`` and ``optimizer*.bin`` or sharded folders), DeepSpeed
(the ``latest`` tag's folder with every rank's optimizer shard).
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ese_trainer.config.parsing import ConfigError
from ese_trainer.errors import describe_error
from ese_trainer.training.fingerprint import describe_changes, fingerprint_changes, read_fingerprint

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
SCHEDULER = "scheduler.pt"
DEEPSPEED_LATEST = "latest"  # DeepSpeed's file naming the tag folder of its checkpoint
FSDP_MODEL, FSDP_OPTIMIZER = "pytorch_model_fsdp", "optimizer"  # accelerate's FSDP names (utils/constants.py)
LAST = ("last", "true")  # --resume_from_checkpoint values meaning the newest complete checkpoint of output_dir


@dataclass
class ResumeArguments:
    """How a run resumes."""

    _argument_group_name = "resume"

    resume_despite_changes: bool = field(
        default=False,
        metadata={"help": "Resume from a checkpoint that was trained on other data or settings (its fingerprint "
                  "differs from this run's, or it records none): go on, print what changed and record it in "
                  "run_info.json. Without it such a resume stops before training."})


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run resumes from, its optimizer step, and what differs from what it was trained on (only
    where ``resume_despite_changes`` let the run go on): setting → ``{"checkpoint": …, "now": …}``."""

    checkpoint: str
    global_step: int
    changes: dict = field(default_factory=dict)

    def record(self) -> dict:
        """For ``run_info.json``."""
        return {"checkpoint": self.checkpoint, "global_step": self.global_step, "changes": self.changes}


def unreadable_file(path: Path) -> str | None:
    """Why ``path`` cannot be read, or None: a safetensors file whose header does not open, a torch file (a zip
    archive) that is not one or whose members fail their CRC check, a JSON file that does not parse."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        elif path.suffix == ".json":
            json.loads(path.read_text())
        else:
            with zipfile.ZipFile(path) as archive:
                broken = archive.testzip()
            if broken is not None:
                return f"{path.name} is unreadable (member {broken} fails its CRC check)"
    except Exception as error:  # noqa: BLE001  (safetensors, zipfile and json raise their own error types)
        return f"{path.name} is unreadable ({describe_error(error)})"
    return None


def _numbered(folder: Path, pattern: str) -> dict[int, Path]:
    """Files or folders of ``folder`` whose name matches ``pattern`` (one group: a process number), by number."""
    found = {}
    for path in folder.iterdir():
        match = re.fullmatch(pattern, path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def _missing_ranks(found: dict[int, Path], world_size: int, what: str) -> str | None:
    missing = [rank for rank in range(world_size) if rank not in found]
    return f"no {what} for process(es) {missing} of {world_size}" if missing else None


def _sharded_folders(folder: Path, prefix: str) -> list[Path]:
    """accelerate's sharded FSDP state folders (``<prefix>_<n>``, torch.distributed.checkpoint)."""
    return sorted(path for path in folder.glob(f"{prefix}_*")
                  if path.is_dir() and path.name[len(prefix) + 1:].isdigit())


def _sharded_problem(paths: list[Path]) -> str | None:
    """A sharded state folder without its ``.metadata`` (torch.distributed.checkpoint writes it last)."""
    return next((f"{path.name}/.metadata is missing" for path in paths
                 if path.is_dir() and not (path / ".metadata").is_file()), None)


def _plain_files(folder: Path) -> tuple[list[Path], list[str | None]]:
    """One process or DDP (transformers' own files): ``model.safetensors`` (or shards, or ``pytorch_model*.bin``)
    and ``optimizer.pt``."""
    weights = sorted(folder.glob("model*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    optimizer = [path for path in (folder / "optimizer.pt",) if path.is_file()]
    return weights + optimizer, ["no model weights" if not weights else None,
                                 "no optimizer state (optimizer.pt): saved with save_only_model?" if not optimizer
                                 else None]


def _fsdp_files(folder: Path) -> tuple[list[Path], list[str | None]]:
    """FSDP (accelerate's ``save_fsdp_model`` / ``save_fsdp_optimizer``, which the Trainer's resume loads):
    ``pytorch_model_fsdp*.bin`` and ``optimizer*.bin`` under a full state dict, ``pytorch_model_fsdp_<n>/`` and
    ``optimizer_<n>/`` sharded."""
    weights = sorted(folder.glob(f"{FSDP_MODEL}*.bin")) + _sharded_folders(folder, FSDP_MODEL)
    optimizer = sorted(folder.glob(f"{FSDP_OPTIMIZER}*.bin")) + _sharded_folders(folder, FSDP_OPTIMIZER)
    return weights + optimizer, [f"no FSDP model state ({FSDP_MODEL}.bin or {FSDP_MODEL}_0/)" if not weights else None,
                                 f"no FSDP optimizer state ({FSDP_OPTIMIZER}.bin or {FSDP_OPTIMIZER}_0/)"
                                 if not optimizer else None, _sharded_problem(weights + optimizer)]


def _deepspeed_files(folder: Path, world_size: int) -> tuple[list[Path], list[str | None]]:
    """DeepSpeed (its engine's ``save_checkpoint``): the ``latest`` tag's folder with the model states and every
    rank's ZeRO optimizer shard."""
    tag = (folder / DEEPSPEED_LATEST).read_text().strip()
    tag_folder = folder / tag
    if not tag or not tag_folder.is_dir():
        return [], [f"{DEEPSPEED_LATEST} names {tag!r}, which is not a folder of the checkpoint"]
    model_states = sorted(tag_folder.glob("*model_states.pt"))
    shards = _numbered(tag_folder, r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt")
    return [*model_states, *shards.values()], [
        f"{tag}/ holds no DeepSpeed model states (*model_states.pt)" if not model_states else None,
        _missing_ranks(shards, world_size, f"DeepSpeed optimizer shard in {tag}/")]


def _checkpoint_world_size(folder: Path) -> int:
    """How many processes saved the checkpoint: its fingerprint's world size, else its RNG files' count."""
    fingerprint = read_fingerprint(folder)
    if fingerprint and isinstance(fingerprint.get("world_size"), int):
        return fingerprint["world_size"]
    if (folder / "rng_state.pth").is_file():
        return 1
    ranks = _numbered(folder, r"rng_state_(\d+)\.pth")
    return max(ranks) + 1 if ranks else 1


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from completely (a file missing or unreadable, named), or None when it can:
    weights, optimizer, scheduler, ``trainer_state.json``, every process's RNG state, all readable."""
    try:
        world_size = _checkpoint_world_size(folder)
    except ConfigError as error:
        return str(error).removeprefix(f"{folder}/")
    if (folder / DEEPSPEED_LATEST).is_file():
        files, problems = _deepspeed_files(folder, world_size)
    elif list(folder.glob(f"{FSDP_OPTIMIZER}*.bin")) or _sharded_folders(folder, FSDP_OPTIMIZER):
        files, problems = _fsdp_files(folder)
    else:
        files, problems = _plain_files(folder)
    for name in (SCHEDULER, TRAINER_STATE):
        if (folder / name).is_file():
            files.append(folder / name)
        else:
            problems.append(f"no {name}")
    if world_size == 1 and (folder / "rng_state.pth").is_file():
        files.append(folder / "rng_state.pth")
    else:
        ranks = _numbered(folder, r"rng_state_(\d+)\.pth")
        files += ranks.values()
        problems.append(_missing_ranks(ranks, world_size, "RNG state (rng_state_<process>.pth)") if world_size > 1
                        else "no RNG state (rng_state.pth)")
    missing = [problem for problem in problems if problem]
    if missing:
        return missing[0]
    for path in files:
        problem = unreadable_file(path) if path.is_file() else None
        if problem:
            return problem if path.parent == folder else f"{path.parent.name}/{problem}"
    state = json.loads((folder / TRAINER_STATE).read_text())
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return f"{TRAINER_STATE} records no global_step"
    return None


def _step(folder: Path) -> int:
    return int(folder.name.rsplit("-", 1)[-1])


def checkpoints_newest_first(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-<step>`` folders of ``output_dir``, the newest (highest step) first."""
    output_dir = Path(output_dir)
    found = output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if output_dir.is_dir() else []
    return sorted((path for path in found if path.is_dir() and path.name.rsplit("-", 1)[-1].isdigit()),
                  key=_step, reverse=True)


def newest_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest checkpoint of ``output_dir`` that can be resumed from, or None."""
    return next((str(folder) for folder in checkpoints_newest_first(output_dir) if checkpoint_problem(folder) is None),
                None)


def find_resume_checkpoint(value: str | None, output_dir: str, warn: bool = True) -> str | None:
    """``--resume_from_checkpoint last`` (or ``true``) means the newest complete checkpoint in ``output_dir``
    (:func:`checkpoint_problem`): one left incomplete or broken, e.g. by a crash mid-save, is skipped for the
    previous one, with a warning naming the file and what was wrong (when ``warn``). A checkpoint named explicitly
    must be complete, else a ConfigError names it and the problem."""
    if value is None or value.lower() in ("", "false", "none"):
        return None
    if value.lower() in LAST:
        folders = checkpoints_newest_first(output_dir)
        if not folders:
            raise ConfigError(f"resume_from_checkpoint={value}: no checkpoint-* folder in {output_dir}")
        skipped = []
        for folder in folders:
            problem = checkpoint_problem(folder)
            if problem is None:
                if skipped and warn:
                    logger.warning("resume_from_checkpoint=%s: skipped %s; resuming from %s", value,
                                   "; ".join(skipped), folder)
                return str(folder)
            skipped.append(f"{folder} ({problem})")
        raise ConfigError(f"resume_from_checkpoint={value}: no checkpoint in {output_dir} can be resumed from: "
                          + "; ".join(skipped))
    if not Path(value).is_dir():
        raise ConfigError(f"resume_from_checkpoint: {value} is not a folder")
    problem = checkpoint_problem(Path(value))
    if problem is not None:
        raise ConfigError(f"resume_from_checkpoint: {value} cannot be resumed from: {problem}")
    return value


def checkpoint_step(checkpoint: str | Path) -> int:
    """The optimizer step a (complete) checkpoint was saved at, from its ``trainer_state.json``."""
    return int(json.loads((Path(checkpoint) / TRAINER_STATE).read_text())["global_step"])


def resume_point(checkpoint: str | None, fingerprint: dict, allow_changes: bool, warn: bool = True
                 ) -> ResumePoint | None:
    """Where the run resumes (None: it starts afresh). A checkpoint trained on other data or settings than
    ``fingerprint`` says (:func:`~ese_trainer.training.fingerprint.fingerprint_changes`) is a ConfigError naming what
    changed, unless ``allow_changes`` (then printed, when ``warn``, and kept in the resume point)."""
    if checkpoint is None:
        return None
    changes = fingerprint_changes(read_fingerprint(checkpoint), fingerprint)
    if changes and not allow_changes:
        raise ConfigError(f"resume_from_checkpoint: {checkpoint} was trained on other data or settings than this run: "
                          f"{describe_changes(changes)}. Resume with what it was trained on, or set "
                          "resume_despite_changes: true to go on and record the change in run_info.json")
    if changes and warn:
        logger.warning("resume_despite_changes: resuming from %s, which was trained on other data or settings: %s",
                       checkpoint, describe_changes(changes))
    return ResumePoint(checkpoint, checkpoint_step(checkpoint), changes)
