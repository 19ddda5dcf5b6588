"""Training throughput: our recipe vs. sentence-transformers' trainer vs. the bare encoder, same pairs.

    python -m bench.train_throughput [--steps 20] [--batch 32] [--repeats 3]

All three train all-MiniLM-L6-v2 on the same ``steps x batch`` real SNLI pairs (one epoch, so the same
tokens; ours and bare in the same batches, ST in its own shuffled ones), fp32, AdamW, for a fixed number of
steps, alternating (ours, ST, bare) ``repeats`` times:

- **ours**: ``ESETrainer`` (CoSENT + in-batch negatives + AnglE, weights 1.0, scale 20);
- **ST**: ``SentenceTransformerTrainer`` with ``CoSENTLoss + AnglELoss + MultipleNegativesRankingLoss``
  (directions query→doc and query→query, both ways) on one embedding of each column — the same terms,
  except that MNRL takes every pair as a positive where ours takes entailment pairs only;
- **bare**: a plain PyTorch loop over our collated batches (the same length-sorted forward passes and
  pooling, the same loss, backward, AdamW step), no Trainer: the floor our loop's overhead is measured against.

Reports pairs/second (median over repeats) and the ratios, in ``bench/results/train_throughput.{json,md}``
(``--forward_chunks N`` for ours and bare; the default 2 is the recipe's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from bench.machine import describe_machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
LEARNING_RATE = 5e-6


def load_pairs(count: int):
    from ese_trainer.data import load_nli_pairs

    pairs, _ = load_nli_pairs(str(REPO / "data" / "SNLI"), split="test", max_samples=count, seed=0)
    return pairs


FORWARD_CHUNKS = 2


def run_ours(pairs, batch: int, steps: int) -> float:
    from transformers import AutoModel, AutoTokenizer, TrainingArguments

    from ese_trainer.arguments import ESEArguments, LossArguments
    from ese_trainer.collator import PairCollator
    from ese_trainer.encoding import SentenceEncoder
    from ese_trainer.hub_models import resolve_model_path
    from ese_trainer.model_loading import build_objective
    from ese_trainer.trainer import ESETrainer

    path = resolve_model_path(MODEL_ID)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    model.pooler.requires_grad_(False)
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=batch, max_steps=steps,
                                 learning_rate=LEARNING_RATE, save_strategy="no", report_to="none",
                                 remove_unused_columns=False, disable_tqdm=True, logging_steps=steps,
                                 train_sampling_strategy="sequential",  # the bare loop's batches, in its order
                                 dataloader_drop_last=True, use_cpu=True, seed=0, dataloader_pin_memory=False)
        objective = build_objective(LossArguments(), ESEArguments(), model.config)
        trainer = ESETrainer(SentenceEncoder(model, "mean", FORWARD_CHUNKS), objective, args=args, train_dataset=pairs,
                             data_collator=PairCollator(tokenizer, 128), processing_class=tokenizer)
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started


class STCombinedLoss(nn.Module):
    """sentence-transformers' CoSENT + AnglE + symmetric MNRL over one embedding of each column."""

    def __init__(self, model) -> None:
        from sentence_transformers.sentence_transformer.losses import (
            AnglELoss,
            CoSENTLoss,
            MultipleNegativesRankingLoss,
        )

        super().__init__()
        self.model = model
        self.cosent, self.angle = CoSENTLoss(model), AnglELoss(model)
        self.mnrl = MultipleNegativesRankingLoss(model, directions=("query_to_doc", "query_to_query"))

    def forward(self, sentence_features, labels: torch.Tensor) -> torch.Tensor:
        from sentence_transformers.base.losses.merged_forward import embed_columns

        emb_a, emb_b = embed_columns(self.model, sentence_features)
        ibn = (self.mnrl.compute_loss_from_embeddings([emb_a, emb_b], labels)
               + self.mnrl.compute_loss_from_embeddings([emb_b, emb_a], labels)) / 2
        return (self.cosent.compute_loss_from_embeddings([emb_a, emb_b], labels)
                + self.angle.compute_loss_from_embeddings([emb_a, emb_b], labels) + ibn)


def run_sentence_transformers(pairs, batch: int, steps: int) -> float:
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from ese_trainer.hub_models import resolve_model_path

    model = SentenceTransformer(resolve_model_path(MODEL_ID), device="cpu")
    with tempfile.TemporaryDirectory() as output_dir:
        args = SentenceTransformerTrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=batch, max_steps=steps, learning_rate=LEARNING_RATE,
            save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=steps, dataloader_drop_last=True,
            use_cpu=True, seed=0, dataloader_pin_memory=False)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs, loss=STCombinedLoss(model))
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started


def run_bare(pairs, batch: int, steps: int) -> float:
    from transformers import AutoModel, AutoTokenizer

    from ese_trainer.arguments import ESEArguments, LossArguments
    from ese_trainer.collator import PairCollator
    from ese_trainer.encoding import SentenceEncoder
    from ese_trainer.hub_models import resolve_model_path
    from ese_trainer.model_loading import build_objective
    from ese_trainer.training_model import TrainingModel

    path = resolve_model_path(MODEL_ID)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    model.pooler.requires_grad_(False)
    training_model = TrainingModel(SentenceEncoder(model, "mean", FORWARD_CHUNKS),
                                   build_objective(LossArguments(), ESEArguments(), model.config)).train()
    collate = PairCollator(tokenizer, 128)
    batches = [collate([pairs[i] for i in range(start, start + batch)]) for start in range(0, steps * batch, batch)]
    # The Trainer's default optimizer on torch >= 2.8 (adamw_torch_fused), with its default weight decay 0.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE,
                                  weight_decay=0.0, fused=True)
    started = time.perf_counter()
    for inputs in batches:
        training_model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--forward_chunks", type=int, default=2, help="ours and bare: length-sorted passes per batch")
    args = parser.parse_args()
    global FORWARD_CHUNKS
    FORWARD_CHUNKS = args.forward_chunks
    pairs = load_pairs(args.steps * args.batch)
    runners = {"ours": run_ours, "sentence-transformers": run_sentence_transformers, "bare": run_bare}
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for repeat in range(args.repeats):
        for name, runner in runners.items():  # alternating, so drift affects every contender alike
            torch.manual_seed(repeat)
            seconds[name].append(runner(pairs, args.batch, args.steps))
            print(f"repeat {repeat + 1}: {name} {seconds[name][-1]:.1f} s", flush=True)
    pairs_per_second = {name: args.steps * args.batch / statistics.median(times) for name, times in seconds.items()}
    ours, st, bare = (pairs_per_second[name] for name in runners)
    ratios = {"ours / sentence-transformers": ours / st, "overhead of ours over bare": bare / ours - 1}
    command = "python -m bench.train_throughput " + " ".join(f"--{k} {v}" for k, v in vars(args).items())
    machine = describe_machine()
    payload = {"command": command, "machine": machine, "model": MODEL_ID, "steps": args.steps, "batch": args.batch,
               "seconds": seconds, "pairs_per_second": pairs_per_second, "ratios": ratios}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_throughput.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = ["| contender | pairs/s (median) | runs (s) |", "|---|---|---|"]
    lines += [f"| {name} | {pairs_per_second[name]:.1f} | {', '.join(f'{t:.1f}' for t in seconds[name])} |"
              for name in runners]
    summary = "\n".join([
        "# Training throughput (all-MiniLM-L6-v2, CPU, fp32)", "", f"Command: `{command}`  ",
        f"Machine: {machine}", "", *lines, "",
        f"ours / sentence-transformers: **{ratios['ours / sentence-transformers']:.2f}x**; "
        f"our overhead over the bare loop: **{100 * ratios['overhead of ours over bare']:.1f}%**.", ""])
    (RESULTS / "train_throughput.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
