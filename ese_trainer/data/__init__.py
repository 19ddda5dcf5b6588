"""Data: training sources (NLI, STS, triplets) and evaluation pairs, read and checked, batched and collated."""

from ese_trainer.data.errors import DataError
from ese_trainer.data.nli import DEFAULT_LABEL_MAP, NLI_LABEL_NAMES, NLIDropCounts, load_nli_pairs
from ese_trainer.data.sts import STS_TASKS, STSPairs, load_sts_pairs, load_sts_task

__all__ = [
    "DEFAULT_LABEL_MAP",
    "NLI_LABEL_NAMES",
    "STS_TASKS",
    "DataError",
    "NLIDropCounts",
    "STSPairs",
    "load_nli_pairs",
    "load_sts_pairs",
    "load_sts_task",
]
