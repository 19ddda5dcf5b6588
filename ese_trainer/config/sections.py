"""Optional YAML sections (``moe:``, ``ese:``): which of their keys a run set."""

from __future__ import annotations


def set_fields(arguments: object, prefix: str) -> list[str]:
    """The fields of a section's dataclass named ``<prefix>...`` (its ``<prefix>enabled`` switch aside) whose value is
    set (not None)."""
    return [name for name in arguments.__dataclass_fields__
            if name.startswith(prefix) and name != f"{prefix}enabled" and getattr(arguments, name) is not None]
