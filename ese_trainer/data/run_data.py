"""A training run's data: the training sources, the dev pairs for model selection, the STS test suite."""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset
from transformers import PreTrainedTokenizerBase, TrainingArguments

from ese_trainer.data import STSPairs, load_sts_pairs, load_sts_task
from ese_trainer.data.arguments import DataArguments
from ese_trainer.data.batching import SourceBatchSampler
from ese_trainer.data.collator import add_length_column
from ese_trainer.data.sources import SourceCounts, load_train_sources


@dataclass
class RunData:
    """``train``: pairs (``sentence1``, ``sentence2``, ``score``, ``source``, ``group``); ``sampler``: its batches
    when there are several sources or hard-negative groups (else the Trainer's own sampler); ``dev``: the dev pairs
    (the evaluation dataset: model selection); ``sources``: what each source gave; ``suite``: the STS test tasks
    scored before and after training."""

    train: Dataset
    sampler: SourceBatchSampler | None
    dev: Dataset
    sources: list[SourceCounts]
    dev_pairs: STSPairs
    suite: dict[str, STSPairs]

    def counts_report(self) -> dict:
        """``data_counts.json``: per source (NLI drops included), batches per epoch, dev and test sizes."""
        report = {"sources": [counts.to_dict() for counts in self.sources], "train_pairs": len(self.train),
                  "sts_dev_pairs": len(self.dev_pairs),
                  "sts_test_pairs": {name: len(pairs) for name, pairs in self.suite.items()}}
        if self.sampler is not None:
            report["batches_per_epoch"] = dict(zip((c.name for c in self.sources), self.sampler.batches_per_source()))
        if len(self.sources) == 1 and self.sources[0].nli:
            report["train"] = self.sources[0].nli  # the one NLI source's reading: rows, kept, dropped and why
        return report


def load_run_data(data_args: DataArguments, training_args: TrainingArguments, tokenizer: PreTrainedTokenizerBase,
                  max_seq_length: int) -> RunData:
    """Everything a run reads, checked (bad rows are errors naming file and row, or dropped and counted)."""
    sources = data_args.train_sources()
    seed = training_args.data_seed or training_args.seed
    with training_args.main_process_first(desc="loading data"):
        train, counts = load_train_sources(sources, seed, data_args.label_map, data_args.hard_negative_batches)
    sampler = None
    if len(sources) > 1 or data_args.hard_negative_batches:
        sampler = SourceBatchSampler(train["source"], train["group"], training_args.per_device_train_batch_size,
                                     [source.weight for source in sources], data_args.train_sampling,
                                     keep_groups=data_args.hard_negative_batches, seed=seed)
    dev_pairs = load_sts_pairs(data_args.sts_dev, data_args.sts_dev_split, name="sts_dev")
    dev = Dataset.from_dict({"sentence1": dev_pairs.sentences1, "sentence2": dev_pairs.sentences2,
                             "score": dev_pairs.scores})
    if training_args.train_sampling_strategy == "group_by_length":
        train, dev = (add_length_column(dataset, tokenizer, max_seq_length, training_args.length_column_name)
                      for dataset in (train, dev))
    suite = {task: load_sts_task(task, data_args.sts_data_dir) for task in data_args.sts_tasks}
    return RunData(train=train, sampler=sampler, dev=dev, sources=counts, dev_pairs=dev_pairs, suite=suite)
