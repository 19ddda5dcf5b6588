"""A one-line description of the machine a benchmark ran on, stored with its results."""

from __future__ import annotations

import os
import platform
import time
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


def busy_cores(seconds: float = 2.0) -> float:
    """Cores kept busy by every process on the machine over the next ``seconds`` (``/proc/stat``; 0.0 where it is
    absent): a timing is taken only where this is near 0, never beside another heavy job."""
    stat = Path("/proc/stat")
    if not stat.is_file():
        return 0.0

    def totals() -> tuple[int, int]:
        ticks = [int(value) for value in stat.read_text().split("\n", 1)[0].split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

    (total, idle), _ = totals(), time.sleep(seconds)
    total_after, idle_after = totals()
    return (1 - (idle_after - idle) / max(1, total_after - total)) * (os.cpu_count() or 1)
