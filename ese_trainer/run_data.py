"""A training run's data: the training pairs, the dev pairs for model selection, the STS test suite."""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset
from transformers import PreTrainedTokenizerBase, TrainingArguments

from ese_trainer.arguments import DataArguments
from ese_trainer.collator import add_length_column
from ese_trainer.data import NLIDropCounts, STSPairs, load_nli_pairs, load_sts_pairs, load_sts_task


@dataclass
class RunData:
    """``train``: pairs (``sentence1``, ``sentence2``, ``score``); ``dev``: the dev pairs in the same layout (the
    evaluation dataset: model selection); ``counts``: what was read, kept and dropped; ``suite``: the STS test tasks
    scored before and after training."""

    train: Dataset
    dev: Dataset
    counts: NLIDropCounts
    dev_pairs: STSPairs
    suite: dict[str, STSPairs]

    def counts_report(self) -> dict:
        """``data_counts.json``."""
        return {"train": self.counts.to_dict(), "sts_dev_pairs": len(self.dev_pairs),
                "sts_test_pairs": {name: len(pairs) for name, pairs in self.suite.items()}}


def load_run_data(data_args: DataArguments, training_args: TrainingArguments, tokenizer: PreTrainedTokenizerBase,
                  max_seq_length: int) -> RunData:
    """Everything a run reads, checked (bad rows are errors naming file and row, or dropped and counted)."""
    with training_args.main_process_first(desc="loading data"):
        train, counts = load_nli_pairs(data_args.train_dataset, data_args.train_split, data_args.train_subset,
                                       data_args.label_map, data_args.max_train_samples,
                                       training_args.data_seed or training_args.seed)
    dev_pairs = load_sts_pairs(data_args.sts_dev, data_args.sts_dev_split, name="sts_dev")
    dev = Dataset.from_dict({"sentence1": dev_pairs.sentences1, "sentence2": dev_pairs.sentences2,
                             "score": dev_pairs.scores})
    if training_args.train_sampling_strategy == "group_by_length":
        train, dev = (add_length_column(dataset, tokenizer, max_seq_length, training_args.length_column_name)
                      for dataset in (train, dev))
    suite = {task: load_sts_task(task, data_args.sts_data_dir) for task in data_args.sts_tasks}
    return RunData(train=train, dev=dev, counts=counts, dev_pairs=dev_pairs, suite=suite)
