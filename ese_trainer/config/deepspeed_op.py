"""DeepSpeed's CPU collectives op: built once at set-up, and a build lock left by a killed process cleared.

DeepSpeed runs on CPU processes load its shared-memory collectives op (``ShareMemCommBuilder``) through torch's
extension loader, ``torch.utils.cpp_extension.load``. Every load, built or not, takes a lock file in the op's build
folder and any other process waits for that file to go, with no time limit (``torch.utils.file_baton.FileBaton``). A
process killed during a load (a timeout, ``kill -9``) leaves the file behind, and every later DeepSpeed run and
``make setup`` then waits forever without a word. A load takes a minute at most, so a lock older than
:data:`STALE_LOCK_SECONDS` is left by a process that is gone: it is removed, with a warning naming it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

COMM_OP_BUILDER = "ShareMemCommBuilder"
STALE_LOCK_SECONDS = 600.0


def extension_build_folder(name: str) -> Path:
    """The folder torch's extension loader builds ``name`` in (``TORCH_EXTENSIONS_DIR`` or its per-user cache)."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


def clear_stale_build_lock(build_folder: Path, stale_after: float = STALE_LOCK_SECONDS) -> bool:
    """Remove ``build_folder/lock`` when it is older than ``stale_after`` seconds; returns whether it did."""
    lock = build_folder / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age < stale_after:
        return False
    logger.warning("removing %s: a build lock %.0f minutes old, left by a process that was killed while loading the "
                   "op (torch would wait for it forever)", lock, age / 60)
    lock.unlink(missing_ok=True)
    return True


def prepare_comm_op(build: bool = False) -> Path | None:
    """Clear a stale lock on DeepSpeed's CPU collectives op and, with ``build``, build (or load) the op now.

    Returns the op's build folder, or None when DeepSpeed or the op is not available here.
    """
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder(COMM_OP_BUILDER)
    if builder is None:
        return None
    folder = extension_build_folder(builder.name)
    clear_stale_build_lock(folder)
    if build:
        builder.load()
    return folder


def main() -> None:
    """``python -m ese_trainer.config.deepspeed_op``: build DeepSpeed's CPU collectives op once, at set-up."""
    logging.basicConfig(level=logging.INFO)
    folder = prepare_comm_op(build=True)
    print(f"DeepSpeed's CPU collectives op is built in {folder}" if folder else
          "DeepSpeed has no CPU collectives op on this machine", flush=True)


if __name__ == "__main__":
    main()
