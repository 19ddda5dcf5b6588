"""Describing an error in one line (a leaf module: the library and the recipes' entry point use it)."""

from __future__ import annotations


def describe_error(error: BaseException, secret: str | None = None) -> str:
    """``Type: first line of the message``, with ``secret`` (e.g. a token) masked."""
    lines = str(error).splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text.replace(secret, "***") if secret else text
