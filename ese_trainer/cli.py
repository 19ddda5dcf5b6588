"""What the recipes share at their entry point: expected errors become one line and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from ese_trainer.config import ConfigError


def describe_error(error: BaseException, secret: str | None = None) -> str:
    """``Type: first line of the message``, with ``secret`` (e.g. a token) masked."""
    lines = str(error).splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text.replace(secret, "***") if secret else text


def run_cli(run: Callable[[list[str]], object], expected: tuple[type[BaseException], ...]) -> None:
    """Call ``run(sys.argv[1:])``; an expected error prints ``error: …`` and exits 2 (config) or 1 (other)."""
    try:
        run(sys.argv[1:])
    except (ConfigError, *expected) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2 if isinstance(error, ConfigError) else 1)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
