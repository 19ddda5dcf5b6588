"""Metrics shipped as ``evaluate`` modules, so they load offline with ``evaluate.load(path)``."""

from pathlib import Path

STS_SPEARMAN_PATH = str(Path(__file__).parent / "sts_spearman" / "sts_spearman.py")
