"""Training throughput: our recipe (packed and padded) vs. sentence-transformers' trainer vs. a bare loop.

    python -m bench.train_throughput [--steps 20] [--batch 32] [--repeats 3] [--bf16]

Every contender trains all-MiniLM-L6-v2 on the same ``steps x batch`` real SNLI dev rows (a seeded subset; a row
is a premise with its hypotheses: its entailment as positive, its contradiction as hard negative, its neutral as a
scored pair), cut into the same ``steps`` batches of ``batch`` rows as the recipe cuts them (``SourceBatchSampler``:
no text twice in a batch), in the same order; one epoch, AdamW (the Trainer's fused default), the same loss terms
(the recipe's defaults: CoSENT + in-batch negatives + AnglE), alternating the contenders ``repeats`` times (the
median run counts):

- **ours, packed**: ``ESETrainer`` with the recipe's batch sampler, ``RowCollator`` (every text of a batch's rows
  encoded once) and the padding-free forward (only real tokens through the encoder);
- **ours, padded**: the same with padded batches in 2 length-sorted forward chunks (the previous default);
- **sentence-transformers**: ``SentenceTransformerTrainer`` on the same texts in its pair layout: every scored pair
  ``(anchor, text, score)`` of the rows, each step the pairs of the same rows (so a premise is encoded once per
  pair), with ``CoSENTLoss + AnglELoss`` on every pair and ``MultipleNegativesRankingLoss`` (query→doc) on the
  positive pairs (no hard negatives in its softmax: in the pair layout a contradiction is a pair of its own), on
  one embedding of each column;
- **bare, packed / padded**: a plain PyTorch loop doing the same work as ours — collate each batch (tokenise), the
  same model and objective (``TrainingModel``), backward, clip at norm 1, fused AdamW step — with no Trainer: the
  floor our loop's overhead is measured against.

Reports rows/s (the same rows for every contender), the texts and real (non-padding) tokens each contender encodes
and its tokens/s, the ratios, and a compute floor: the real-token FLOPs of the rows' texts, each encoded once per
batch as ours does (``6 x non-embedding parameters`` per token, forward + backward), over this machine's measured
fp32 (or bf16) matmul FLOP/s, and each contender's time over that floor. Results:
``bench/results/train_throughput[_bf16].{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
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
MAX_LENGTH = 128


def real_token_count(tokenizer, texts: list[str]) -> int:
    """The real (non-padding) tokens of ``texts`` at the recipe's truncation length."""
    return sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"])


def non_embedding_parameters(model: nn.Module) -> int:
    """A BERT's parameters outside its embedding tables and pooler: those a token's matmuls use (the compute
    floor's ``2 x`` forward, ``6 x`` forward + backward, FLOPs per token)."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(("embeddings.", "pooler.")))


def load_rows(steps: int, batch: int, seed: int = 0):
    """``steps x batch`` SNLI dev rows (a seeded subset) and the recipe's batch sampler over them: one epoch is
    exactly ``steps`` batches of ``batch`` rows, the same batches in the same order every time it is iterated."""
    from ese_trainer.data.batching import SourceBatchSampler
    from ese_trainer.data.collator import row_text_ids
    from ese_trainer.data.sources import TrainSource, load_train_sources

    count = steps * batch
    source = TrainSource.parse({"source": str(REPO / "data" / "SNLI"), "split": "dev", "max_samples": count}, 0)
    rows, _ = load_train_sources([source], seed)
    if len(rows) < count:
        raise SystemExit(f"data/SNLI dev has {len(rows)} rows, fewer than --steps x --batch = {count}")
    row_texts = [row_text_ids(row) for row in rows.select_columns(["anchor", "texts"])]
    return rows, SourceBatchSampler(rows["source"], row_texts, batch, [1.0], seed=seed)


def row_pairs(rows, batches: list[list[int]]):
    """The rows' scored pairs ``(anchor, text, score)`` as sentence-transformers' columns (``sentence1``,
    ``sentence2``, ``score``), in batch order, and the pairs of each batch (indices into them)."""
    from datasets import Dataset

    columns: dict[str, list] = {"sentence1": [], "sentence2": [], "score": []}
    pair_batches = []
    for batch in batches:
        start = len(columns["score"])
        for index in batch:
            row = rows[index]
            for text, score in zip(row["texts"], row["scores"]):
                if score is not None and not math.isnan(score):
                    columns["sentence1"].append(row["anchor"])
                    columns["sentence2"].append(text)
                    columns["score"].append(score)
        pair_batches.append(list(range(start, len(columns["score"]))))
    return Dataset.from_dict(columns), pair_batches


def our_parts(packed: bool):
    from transformers import AutoModel, AutoTokenizer

    from ese_trainer.ese.arguments import ESEArguments
    from ese_trainer.hub_models import resolve_model_path
    from ese_trainer.losses.arguments import LossArguments
    from ese_trainer.modeling.encoding import SentenceEncoder
    from ese_trainer.training.build import build_objective

    path = resolve_model_path(MODEL_ID)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    model.pooler.requires_grad_(False)
    encoder = SentenceEncoder(model, "mean", forward_chunks=1 if packed else 2, packed=packed)
    return tokenizer, encoder, build_objective(LossArguments(), ESEArguments(), model.config)


def run_ours(rows, sampler, batch: int, steps: int, packed: bool, bf16: bool) -> float:
    from transformers import TrainingArguments

    from ese_trainer.data.collator import RowCollator
    from ese_trainer.training.trainer import ESETrainer

    tokenizer, encoder, objective = our_parts(packed)
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=batch, max_steps=steps,
                                 learning_rate=LEARNING_RATE, save_strategy="no", report_to="none",
                                 remove_unused_columns=False, disable_tqdm=True, logging_steps=steps,
                                 dataloader_drop_last=True, use_cpu=True, seed=0, dataloader_pin_memory=False,
                                 bf16=bf16)
        trainer = ESETrainer(encoder, objective, args=args, train_dataset=rows,
                             data_collator=RowCollator(tokenizer, MAX_LENGTH), processing_class=tokenizer,
                             train_batch_sampler=sampler)  # the bare loop's batches, in its order
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started


class STCombinedLoss(nn.Module):
    """sentence-transformers' CoSENT + AnglE on every pair + MNRL (query→doc, our default direction) on the positive
    pairs (score 1: a row's positive), over one embedding of each column."""

    def __init__(self, model) -> None:
        from sentence_transformers.sentence_transformer.losses import (
            AnglELoss,
            CoSENTLoss,
            MultipleNegativesRankingLoss,
        )

        super().__init__()
        self.model = model
        self.cosent, self.angle = CoSENTLoss(model), AnglELoss(model)
        self.mnrl = MultipleNegativesRankingLoss(model, directions=("query_to_doc",))

    def forward(self, sentence_features, labels: torch.Tensor) -> torch.Tensor:
        from sentence_transformers.base.losses.merged_forward import embed_columns

        emb_a, emb_b = embed_columns(self.model, sentence_features)
        loss = (self.cosent.compute_loss_from_embeddings([emb_a, emb_b], labels)
                + self.angle.compute_loss_from_embeddings([emb_a, emb_b], labels))
        positive = labels >= 1.0
        if positive.any():
            loss = loss + self.mnrl.compute_loss_from_embeddings([emb_a[positive], emb_b[positive]],
                                                                 labels[positive])
        return loss


def fixed_batches(batches: list[list[int]]):
    """A sentence-transformers ``batch_sampler`` (a callable) yielding exactly ``batches``, in order."""
    from sentence_transformers.base.sampler import DefaultBatchSampler

    class FixedBatchSampler(DefaultBatchSampler):
        def __iter__(self):
            yield from batches

        def __len__(self) -> int:
            return len(batches)

    return lambda dataset, **kwargs: FixedBatchSampler(dataset, **kwargs)


def run_sentence_transformers(pairs, pair_batches: list[list[int]], batch: int, steps: int, bf16: bool) -> float:
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from ese_trainer.hub_models import resolve_model_path

    model = SentenceTransformer(resolve_model_path(MODEL_ID), device="cpu")
    with tempfile.TemporaryDirectory() as output_dir:
        args = SentenceTransformerTrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=batch, max_steps=steps, learning_rate=LEARNING_RATE,
            save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=steps, dataloader_drop_last=True,
            use_cpu=True, seed=0, dataloader_pin_memory=False, bf16=bf16,
            batch_sampler=fixed_batches(pair_batches))  # each step the pairs of ours' step's rows
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs, loss=STCombinedLoss(model))
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started


def run_bare(rows, batches: list[list[int]], packed: bool, bf16: bool) -> float:
    from ese_trainer.data.collator import RowCollator
    from ese_trainer.training.training_model import TrainingModel

    tokenizer, encoder, objective = our_parts(packed)
    training_model = TrainingModel(encoder, objective).train()
    collate = RowCollator(tokenizer, MAX_LENGTH)
    # The Trainer's defaults: fused AdamW (torch >= 2.8), weight decay 0, gradient clipping at norm 1.
    parameters = [p for p in training_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE, weight_decay=0.0, fused=True)
    started = time.perf_counter()
    for batch in batches:
        inputs = collate([rows[index] for index in batch])  # reading and tokenising, as the Trainer's data loader
        bare_step(training_model, inputs, parameters, optimizer, bf16)
    return time.perf_counter() - started


def bare_step(training_model, inputs: dict, parameters: list, optimizer, bf16: bool) -> None:
    """One optimizer step as the Trainer takes it: forward (bf16 autocast if asked), backward, clip at 1, step."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = training_model(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def matmul_flops_per_second(bf16: bool, repeats: int = 20) -> float:
    """This machine's matmul rate on the model's own GEMM shapes (1,024 tokens x 384 x 1,536), best of ``repeats``."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(1024, 384, dtype=dtype), torch.randn(384, 1536, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(10):
            a @ b
        best = min(best, (time.perf_counter() - started) / 10)
    return 2 * 1024 * 384 * 1536 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32, help="rows per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CPU: AVX512-bf16) for every contender")
    args = parser.parse_args()
    rows, sampler = load_rows(args.steps, args.batch)
    batches = list(sampler)
    pairs, pair_batches = row_pairs(rows, batches)
    runners = {
        "ours, packed": lambda: run_ours(rows, sampler, args.batch, args.steps, True, args.bf16),
        "ours, padded": lambda: run_ours(rows, sampler, args.batch, args.steps, False, args.bf16),
        "sentence-transformers": lambda: run_sentence_transformers(pairs, pair_batches, args.batch, args.steps,
                                                                   args.bf16),
        "bare, packed": lambda: run_bare(rows, batches, True, args.bf16),
        "bare, padded": lambda: run_bare(rows, batches, False, args.bf16),
    }
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for repeat in range(args.repeats):
        for name, runner in runners.items():  # alternating, so drift affects every contender alike
            torch.manual_seed(repeat)
            seconds[name].append(runner())
            print(f"repeat {repeat + 1}: {name} {seconds[name][-1]:.1f} s", flush=True)

    from transformers import AutoTokenizer

    from ese_trainer.hub_models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(MODEL_ID))

    # What each contender encodes: ours every text of a batch's rows once (anchors, then the others), the peer both
    # sides of every pair (a premise once per hypothesis).
    row_texts = [text for batch in batches for index in batch
                 for text in (rows[index]["anchor"], *rows[index]["texts"])]
    pair_texts = list(pairs["sentence1"]) + list(pairs["sentence2"])
    real_tokens = real_token_count(tokenizer, row_texts)
    encoded = {"rows": {"texts": len(row_texts), "real_tokens": real_tokens},
               "pairs": {"texts": len(pair_texts), "real_tokens": real_token_count(tokenizer, pair_texts)}}
    layout = {name: "pairs" if name == "sentence-transformers" else "rows" for name in runners}
    _, encoder, _ = our_parts(False)
    non_embedding = non_embedding_parameters(encoder.transformer)
    flops = 6 * non_embedding * real_tokens
    rate = matmul_flops_per_second(args.bf16)
    floor = flops / rate
    median = {name: statistics.median(times) for name, times in seconds.items()}
    rows_per_second = {name: args.steps * args.batch / value for name, value in median.items()}
    tokens_per_second = {name: encoded[layout[name]]["real_tokens"] / value for name, value in median.items()}
    ours = median["ours, packed"]
    ratios = {
        "ours packed / sentence-transformers": median["sentence-transformers"] / ours,
        "ours packed / ours padded": median["ours, padded"] / ours,
        "overhead of ours packed over bare packed": ours / median["bare, packed"] - 1,
        "overhead of ours padded over bare padded": median["ours, padded"] / median["bare, padded"] - 1,
        "ours packed time over the compute floor": ours / floor,
    }
    command = "python -m bench.train_throughput " + " ".join(
        f"--{key}" + ("" if isinstance(value, bool) else f" {value}") for key, value in vars(args).items()
        if value is not False)
    machine = describe_machine()
    payload = {"command": command, "machine": machine, "model": MODEL_ID, "steps": args.steps, "batch": args.batch,
               "bf16": args.bf16, "rows": args.steps * args.batch, "pairs": len(pairs), "seconds": seconds,
               "rows_per_second": rows_per_second, "encoded": encoded, "layout": layout,
               "real_tokens": real_tokens, "real_tokens_per_second": tokens_per_second,
               "compute_floor": {"non_embedding_parameters": non_embedding, "flops_6nd": flops,
                                 "matmul_flops_per_second": rate, "floor_seconds": floor},
               "ratios": ratios}
    stem = "train_throughput" + ("_bf16" if args.bf16 else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = ["| contender | rows/s | texts encoded | real tokens/s | time over compute floor | runs (s) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {rows_per_second[name]:.1f} | {encoded[layout[name]]['texts']} | "
              f"{tokens_per_second[name]:.0f} | {median[name] / floor:.1f}x | "
              f"{', '.join(f'{t:.1f}' for t in seconds[name])} |" for name in runners]
    summary = "\n".join([
        f"# Training throughput (all-MiniLM-L6-v2, CPU, {'bf16 autocast' if args.bf16 else 'fp32'})", "",
        f"Command: `{command}`  ", f"Machine: {machine}", "",
        f"{args.steps} steps of {args.batch} SNLI dev rows ({args.steps * args.batch} rows, {len(pairs)} scored "
        "pairs): "
        f"ours encodes {encoded['rows']['texts']} texts ({encoded['rows']['real_tokens']} real tokens), "
        f"sentence-transformers, on the same pairs, {encoded['pairs']['texts']} "
        f"({encoded['pairs']['real_tokens']}).", "", *lines, "",
        f"ours (packed) / sentence-transformers: **{ratios['ours packed / sentence-transformers']:.2f}x**; "
        f"packed / padded: **{ratios['ours packed / ours padded']:.2f}x**; overhead of ours over the bare packed "
        f"loop: **{100 * ratios['overhead of ours packed over bare packed']:.1f}%**.", "",
        f"Compute floor: {flops / 1e12:.2f} TFLOP ({real_tokens} real tokens of the rows' texts x 6 x "
        f"{non_embedding / 1e6:.1f}M "
        f"non-embedding parameters) at {rate / 1e9:.0f} GFLOP/s measured matmul = {floor:.1f} s; ours takes "
        f"**{ratios['ours packed time over the compute floor']:.1f}x** that.", ""])
    (RESULTS / f"{stem}.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
