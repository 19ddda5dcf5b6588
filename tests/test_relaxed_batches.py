"""relaxed_batches: the steps that had to take a row sharing a text with another row of the step. data_counts.json
records them for every epoch the run draws, counted before training exactly as the sampler then draws and logs them."""

import logging

from transformers import TrainingArguments

from ese_trainer.data.batching import SourceBatchSampler
from ese_trainer.release.output_folder import epochs_drawn, relaxed_batches

# Rows 0-3 share text 1: a step of 3 rows can hold only one of them, so once the others run out, steps relax.
ROW_TEXTS = [(1, 2), (1, 3), (1, 4), (1, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15)]


def test_counted_before_training_as_drawn_and_logged(caplog):
    sampler = SourceBatchSampler([0] * len(ROW_TEXTS), ROW_TEXTS, 3, [1.0], seed=3)
    counts = relaxed_batches(sampler, 4)
    assert sum(counts) > 0
    for epoch, count in enumerate(counts):
        sampler.set_epoch(epoch)
        with caplog.at_level(logging.INFO, logger="ese_trainer.data.batching"):
            batches = list(sampler)
        assert len(batches) == 3 and sampler.relaxed_batches == count
        assert f"epoch {epoch}: 3 steps, {count} of them relaxed (relaxed_batches" in caplog.text
        relaxed = sum(len({text for row in batch for text in ROW_TEXTS[row]}) < 6 for batch in batches)
        assert relaxed == count  # a relaxed step holds fewer distinct texts than its 3 rows' 6


def test_epochs_drawn_follows_the_trainers_count(tmp_path):
    """transformers' Trainer: optimizer steps per epoch = ceil(batches / accumulation); epochs = ceil(max_steps /
    that), or ceil(num_train_epochs) without max_steps."""
    def epochs(**settings):
        return epochs_drawn(TrainingArguments(output_dir=str(tmp_path), report_to="none", **settings), 4)

    assert epochs(max_steps=5, gradient_accumulation_steps=2) == 3
    assert epochs(max_steps=4) == 1 and epochs(max_steps=5) == 2
    assert epochs(num_train_epochs=1.5) == 2 and epochs(num_train_epochs=1) == 1
