"""Training throughput: our recipe (packed and padded) vs. sentence-transformers' trainer vs. a bare loop.

    python -m bench.train_throughput [--steps 20] [--batch 32] [--repeats 3] [--bf16]

Every contender trains all-MiniLM-L6-v2 on the same ``steps x batch`` real SNLI pairs (one epoch, so the same
tokens), AdamW (the Trainer's fused default), the same loss terms, for a fixed number of steps, alternating the
contenders ``repeats`` times (the median run counts):

- **ours, packed**: ``ESETrainer`` with the padding-free forward (only real tokens through the encoder);
- **ours, padded**: the same with padded batches in 2 length-sorted forward chunks (the previous default);
- **sentence-transformers**: ``SentenceTransformerTrainer`` with ``CoSENTLoss + AnglELoss +
  MultipleNegativesRankingLoss`` (query→doc and query→query, both ways) on one embedding of each column;
- **bare, packed / padded**: a plain PyTorch loop doing the same work — collate each batch (tokenise), the same
  model and objective (``TrainingModel``), backward, clip at norm 1, fused AdamW step — with no Trainer: the floor
  our loop's overhead is measured against.

Reports pairs/s and real (non-padding) tokens/s, the ratios, and a compute floor: the run's real-token FLOPs
(``6 x non-embedding parameters`` per token, forward + backward) over this machine's measured fp32 (or bf16) matmul
FLOP/s, and each contender's time over that floor. Results: ``bench/results/train_throughput[_bf16].{json,md}``.
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
MAX_LENGTH = 128


def load_pairs(count: int):
    from ese_trainer.data import load_nli_pairs

    pairs, _ = load_nli_pairs(str(REPO / "data" / "SNLI"), split="test", max_samples=count, seed=0)
    return pairs


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


def run_ours(pairs, batch: int, steps: int, packed: bool, bf16: bool) -> float:
    from transformers import TrainingArguments

    from ese_trainer.data.collator import PairCollator
    from ese_trainer.training.trainer import ESETrainer

    tokenizer, encoder, objective = our_parts(packed)
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=batch, max_steps=steps,
                                 learning_rate=LEARNING_RATE, save_strategy="no", report_to="none",
                                 remove_unused_columns=False, disable_tqdm=True, logging_steps=steps,
                                 train_sampling_strategy="sequential",  # the bare loop's batches, in its order
                                 dataloader_drop_last=True, use_cpu=True, seed=0, dataloader_pin_memory=False,
                                 bf16=bf16)
        trainer = ESETrainer(encoder, objective, args=args, train_dataset=pairs,
                             data_collator=PairCollator(tokenizer, MAX_LENGTH), processing_class=tokenizer)
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


def run_sentence_transformers(pairs, batch: int, steps: int, bf16: bool) -> float:
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from ese_trainer.hub_models import resolve_model_path

    model = SentenceTransformer(resolve_model_path(MODEL_ID), device="cpu")
    with tempfile.TemporaryDirectory() as output_dir:
        args = SentenceTransformerTrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=batch, max_steps=steps, learning_rate=LEARNING_RATE,
            save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=steps, dataloader_drop_last=True,
            use_cpu=True, seed=0, dataloader_pin_memory=False, bf16=bf16)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs, loss=STCombinedLoss(model))
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started


def run_bare(pairs, batch: int, steps: int, packed: bool, bf16: bool) -> float:
    from ese_trainer.data.collator import PairCollator
    from ese_trainer.training.training_model import TrainingModel

    tokenizer, encoder, objective = our_parts(packed)
    training_model = TrainingModel(encoder, objective).train()
    collate = PairCollator(tokenizer, MAX_LENGTH)
    rows = [[pairs[i] for i in range(start, start + batch)] for start in range(0, steps * batch, batch)]
    # The Trainer's defaults: fused AdamW (torch >= 2.8), weight decay 0, gradient clipping at norm 1.
    parameters = [p for p in training_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE, weight_decay=0.0, fused=True)
    started = time.perf_counter()
    for features in rows:
        inputs = collate(features)  # tokenising is part of every step, as in the Trainer's data loader
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = training_model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


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
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CPU: AVX512-bf16) for every contender")
    args = parser.parse_args()
    pairs = load_pairs(args.steps * args.batch)
    runners = {
        "ours, packed": lambda: run_ours(pairs, args.batch, args.steps, True, args.bf16),
        "ours, padded": lambda: run_ours(pairs, args.batch, args.steps, False, args.bf16),
        "sentence-transformers": lambda: run_sentence_transformers(pairs, args.batch, args.steps, args.bf16),
        "bare, packed": lambda: run_bare(pairs, args.batch, args.steps, True, args.bf16),
        "bare, padded": lambda: run_bare(pairs, args.batch, args.steps, False, args.bf16),
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
    texts = list(pairs["sentence1"]) + list(pairs["sentence2"])
    real_tokens = sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"])
    _, encoder, _ = our_parts(False)
    non_embedding = sum(p.numel() for name, p in encoder.transformer.named_parameters()
                        if not name.startswith(("embeddings.", "pooler.")))
    flops = 6 * non_embedding * real_tokens
    rate = matmul_flops_per_second(args.bf16)
    floor = flops / rate
    median = {name: statistics.median(times) for name, times in seconds.items()}
    pairs_per_second = {name: args.steps * args.batch / value for name, value in median.items()}
    tokens_per_second = {name: real_tokens / value for name, value in median.items()}
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
               "bf16": args.bf16, "seconds": seconds, "pairs_per_second": pairs_per_second,
               "real_tokens": real_tokens, "real_tokens_per_second": tokens_per_second,
               "compute_floor": {"non_embedding_parameters": non_embedding, "flops_6nd": flops,
                                 "matmul_flops_per_second": rate, "floor_seconds": floor},
               "ratios": ratios}
    stem = "train_throughput" + ("_bf16" if args.bf16 else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = ["| contender | pairs/s | real tokens/s | time over compute floor | runs (s) |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {pairs_per_second[name]:.1f} | {tokens_per_second[name]:.0f} | "
              f"{median[name] / floor:.1f}x | {', '.join(f'{t:.1f}' for t in seconds[name])} |" for name in runners]
    summary = "\n".join([
        f"# Training throughput (all-MiniLM-L6-v2, CPU, {'bf16 autocast' if args.bf16 else 'fp32'})", "",
        f"Command: `{command}`  ", f"Machine: {machine}", "", *lines, "",
        f"ours (packed) / sentence-transformers: **{ratios['ours packed / sentence-transformers']:.2f}x**; "
        f"packed / padded: **{ratios['ours packed / ours padded']:.2f}x**; overhead of ours over the bare packed "
        f"loop: **{100 * ratios['overhead of ours packed over bare packed']:.1f}%**.", "",
        f"Compute floor: {flops / 1e12:.2f} TFLOP ({real_tokens} real tokens x 6 x {non_embedding / 1e6:.1f}M "
        f"non-embedding parameters) at {rate / 1e9:.0f} GFLOP/s measured matmul = {floor:.1f} s; ours takes "
        f"**{ratios['ours packed time over the compute floor']:.1f}x** that.", ""])
    (RESULTS / f"{stem}.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
