"""A one-line description of the machine a benchmark ran on, stored with its results."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``'s first "model name", else the platform's). Standard library only."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return cpu


def describe_machine() -> str:
    import torch

    cpu = cpu_name()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {device}; "
            f"Python {platform.python_version()}, torch {torch.__version__}")
