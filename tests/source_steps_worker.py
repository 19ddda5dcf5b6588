"""Run under ``accelerate launch`` (2 CPU processes) by test_scale_out.py: the training batches of a run with two
sources (SNLI rows and STS-B train pairs), drawn by the recipe's sampler through ``ESETrainer``'s dataloader.

Each process gathers, for every step, the text ids of its batch's anchors and of all its texts; the main process saves
the global steps (one entry per process) to the file given as the first argument.
"""

import sys

import torch
import torch.distributed as dist
from transformers import AutoTokenizer, TrainingArguments

from ese_trainer.data.batching import SourceBatchSampler
from ese_trainer.data.collator import TEXT_IDS_KEY, RowCollator, row_text_ids
from ese_trainer.data.sources import TrainSource, load_train_sources
from ese_trainer.ese.arguments import ESEArguments
from ese_trainer.hub_models import resolve_model_path
from ese_trainer.losses.arguments import LossArguments
from ese_trainer.modeling.encoding import SentenceEncoder
from ese_trainer.training.build import build_objective
from ese_trainer.training.trainer import ESETrainer
from tests.conftest import EMBEDDED_DATA, MINILM_ID, build_tiny_bert

BATCH = 4

if __name__ == "__main__":
    output_path = sys.argv[1]
    sources = [TrainSource(str(EMBEDDED_DATA / "SNLI"), "nli", "dev", max_samples=60),
               TrainSource(str(EMBEDDED_DATA / "STS" / "STSBenchmark" / "sts-train.csv"), "sts", max_samples=60)]
    args = TrainingArguments(output_dir="unused", per_device_train_batch_size=BATCH, use_cpu=True, report_to="none",
                             remove_unused_columns=False, dataloader_drop_last=True, dataloader_pin_memory=False)
    with args.main_process_first():  # as the recipe: one process writes the datasets cache
        rows, _ = load_train_sources(sources, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(MINILM_ID))
    model = build_tiny_bert(len(tokenizer))
    with_ids = [row_text_ids(row) for row in rows.select_columns(["anchor", "texts"])]
    sampler = SourceBatchSampler(rows["source"], with_ids, BATCH, [1.0, 1.0], seed=3, processes=args.world_size)
    trainer = ESETrainer(SentenceEncoder(model, "mean"), build_objective(LossArguments(), ESEArguments(),
                                                                         model.config),
                         args=args, train_dataset=rows, data_collator=RowCollator(tokenizer, 64),
                         processing_class=tokenizer, train_batch_sampler=sampler)
    steps = []
    for batch in trainer.get_train_dataloader():
        local = {"anchors": batch[TEXT_IDS_KEY][:BATCH].tolist(), "texts": batch[TEXT_IDS_KEY].tolist()}
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
        steps.append(gathered)
    if dist.get_rank() == 0:
        source_of = {ids[0]: source for ids, source in zip(with_ids, rows["source"])}
        torch.save({"world_size": dist.get_world_size(), "steps": steps, "source_of_anchor": source_of,
                    "rows_per_source": [list(rows["source"]).count(source) for source in (0, 1)],
                    "steps_per_source": sampler.steps_per_source()}, output_path)
    dist.barrier()
    dist.destroy_process_group()
