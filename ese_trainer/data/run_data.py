"""A training run's data: the training rows and their batches, the dev rows for model selection, the STS test suite."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
from transformers import TrainingArguments

from ese_trainer.data.arguments import DataArguments
from ese_trainer.data.batching import SourceBatchSampler
from ese_trainer.data.collator import row_text_ids
from ese_trainer.data.rows import RoleThresholds
from ese_trainer.data.sources import SourceCounts, load_train_sources
from ese_trainer.data.sts import STSPairs, load_sts_pairs, load_sts_task

MINING_CACHE = ".mining_cache"  # under output_dir: the mining model's embeddings, shared by the processes


@dataclass
class RunData:
    """``train``: rows (``anchor``, ``texts``, ``scores``, ``roles``, ``source``); ``sampler``: their batches (one
    source per step, no text twice in a step); ``dev``: the dev pairs as rows (the evaluation dataset: model
    selection); ``sources``: what each source gave; ``suite``: the STS test tasks scored before and after training."""

    train: Dataset
    sampler: SourceBatchSampler
    dev: Dataset
    sources: list[SourceCounts]
    dev_pairs: STSPairs
    suite: dict[str, STSPairs]

    def counts_report(self) -> dict:
        """``data_counts.json``: per source (NLI drops, rows and their roles, mined negatives), steps per epoch, dev
        and test sizes."""
        return {"sources": [counts.to_dict() for counts in self.sources], "train_rows": len(self.train),
                "steps_per_epoch": dict(zip((c.name for c in self.sources), self.sampler.steps_per_source())),
                "sts_dev_pairs": len(self.dev_pairs),
                "sts_test_pairs": {name: len(pairs) for name, pairs in self.suite.items()}}

    def texts(self) -> list[str]:
        """Every distinct text of the training and dev rows (what a guide model embeds)."""
        texts = dict.fromkeys(self.train["anchor"])
        for others in self.train["texts"]:
            texts.update(dict.fromkeys(others))
        texts.update(dict.fromkeys(self.dev["anchor"]))
        for others in self.dev["texts"]:
            texts.update(dict.fromkeys(others))
        return list(texts)


def pairs_as_rows(pairs: STSPairs, thresholds: RoleThresholds) -> Dataset:
    """Scored pairs as one-text rows (an evaluation set: the second side's role follows its score)."""
    return Dataset.from_dict({"anchor": pairs.sentences1, "texts": [[text] for text in pairs.sentences2],
                              "scores": [[score] for score in pairs.scores],
                              "roles": [[thresholds.role(score)] for score in pairs.scores]})


def load_run_data(data_args: DataArguments, training_args: TrainingArguments, mining_model: str | None = None
                  ) -> RunData:
    """Everything a run reads, checked (bad rows are errors naming file and row, or dropped and counted).
    ``mining_model`` (a folder) mines negatives for the sources that ask for them."""
    sources, thresholds = data_args.train_sources(), data_args.role_thresholds()
    seed = training_args.data_seed or training_args.seed
    with training_args.main_process_first(desc="loading data"):
        train, counts = load_train_sources(sources, seed, data_args.label_map, thresholds, mining_model,
                                           Path(training_args.output_dir) / MINING_CACHE)
    row_texts = [row_text_ids(row) for row in train.select_columns(["anchor", "texts"])]
    sampler = SourceBatchSampler(train["source"], row_texts, training_args.per_device_train_batch_size,
                                 [source.weight for source in sources], data_args.train_sampling, seed=seed,
                                 processes=training_args.world_size)
    dev_pairs = load_sts_pairs(data_args.sts_dev, data_args.sts_dev_split, name="sts_dev")
    suite = {task: load_sts_task(task, data_args.sts_data_dir) for task in data_args.sts_tasks}
    return RunData(train=train, sampler=sampler, dev=pairs_as_rows(dev_pairs, thresholds), sources=counts,
                   dev_pairs=dev_pairs, suite=suite)
