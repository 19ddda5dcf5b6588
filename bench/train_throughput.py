"""Training throughput: our recipe (packed and padded) vs. sentence-transformers' trainer vs. a bare loop.

    python -m bench.train_throughput [--steps 20] [--batch 32] [--repeats 3] [--bf16]

Every contender trains all-MiniLM-L6-v2 on the same ``steps x batch`` real SNLI dev rows (a seeded subset of the
rows that hold a premise's three hypotheses: its entailment as positive, its contradiction as hard negative, its
neutral as a scored pair; three rows in four), cut into the same ``steps`` batches of ``batch`` rows as the recipe
cuts them (``SourceBatchSampler``: no text twice in a batch), in the same order; one epoch, AdamW (the Trainer's
fused default), the same loss terms at the recipe's weights (CoSENT + 10 x in-batch negatives + AnglE), alternating
the contenders ``repeats`` times (the median run counts):

- **ours, packed**: ``ESETrainer`` with the recipe's batch sampler, ``RowCollator`` (every text of a batch's rows
  encoded once) and the padding-free forward (only real tokens through the encoder);
- **ours, packed, attention dropout 0**: the same with ``model.attention_dropout: 0`` (PyTorch's fused flash SDPA
  kernel on CPU; its effect on quality is measured apart);
- **ours, packed, fast dropout**: the same with ``model.fast_dropout`` (dropout masks four elements per 64-bit
  random draw instead of one ``bernoulli_`` draw each; another random stream, so not yet the default);
- **ours, padded**: the same with padded batches in 2 length-sorted forward chunks (the previous default);
- **sentence-transformers, same texts**: ``SentenceTransformerTrainer`` on the same rows as columns ``anchor,
  positive, negative, neutral`` (each text encoded once, as ours does; sentence-transformers 6 embeds the anchor
  column, then the three candidate columns merged into one padded forward), with ``CoSENTLoss + AnglELoss`` on the
  three scored pairs of every row and ``MultipleNegativesRankingLoss`` (query→doc) on ``(anchor, positive,
  negative)``: every positive and hard negative of the batch a candidate, as in ours;
- **sentence-transformers, pairs**: the previous layout, every scored pair ``(anchor, text, score)`` of the rows a
  row of its own (a premise encoded once per hypothesis), MNRL on the positive pairs only;
- **bare, packed / padded**: a plain PyTorch loop doing the same work as ours — collate each batch (tokenise), the
  same model and objective (``TrainingModel``), backward, clip at norm 1, fused AdamW step — with no Trainer: what
  our loop's overhead is measured against.

Reports rows/s (the same rows for every contender), the texts and real (non-padding) tokens each contender encodes
and its tokens/s, the ratios against the fastest sentence-transformers contender and against the pair layout, and
the overheads, each with its run-to-run spread (the ratio of the runs of one repeat, min to max over the repeats).
The compute floor (:mod:`bench.step_floor`) is the step's actual GEMMs, forward and backward, at this machine's
measured rates per GEMM shape, plus the optimizer's memory traffic at its measured bandwidth; each contender's time
is quoted over it. Results: ``bench/results/train_throughput[_bf16].{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from bench.machine import describe_machine
from bench.step_floor import describe_ratio, floor_table, gemm_floor, optimizer_floor, paired_ratio

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
LEARNING_RATE = 5e-6
MAX_LENGTH = 128
ST_CANDIDATE_COLUMNS = ("positive", "negative", "neutral")  # a complete row's texts, in role order


def real_token_count(tokenizer, texts: list[str]) -> int:
    """The real (non-padding) tokens of ``texts`` at the recipe's truncation length."""
    return sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"])


def non_embedding_parameters(model: nn.Module) -> int:
    """A BERT's parameters outside its embedding tables and pooler: those a token's matmuls use (the compute
    floor's ``2 x`` forward, ``6 x`` forward + backward, FLOPs per token)."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(("embeddings.", "pooler.")))


def load_rows(steps: int, batch: int, seed: int = 0):
    """``steps x batch`` SNLI dev rows with all three hypotheses (a seeded subset) and the recipe's batch sampler
    over them: one epoch is exactly ``steps`` batches of ``batch`` rows, the same batches in the same order every
    time it is iterated."""
    from ese_trainer.data.batching import SourceBatchSampler
    from ese_trainer.data.collator import row_text_ids
    from ese_trainer.data.rows import NEGATIVE, POSITIVE, SCORED
    from ese_trainer.data.sources import TrainSource, load_train_sources

    count = steps * batch
    source = TrainSource.parse({"source": str(REPO / "data" / "SNLI"), "split": "dev"}, 0)
    rows, _ = load_train_sources([source], seed)
    complete = [index for index, roles in enumerate(rows["roles"]) if tuple(roles) == (POSITIVE, NEGATIVE, SCORED)]
    if len(complete) < count:
        raise SystemExit(f"data/SNLI dev has {len(complete)} rows with all three hypotheses, fewer than --steps x "
                         f"--batch = {count}")
    rows = rows.select(sorted(random.Random(seed).sample(complete, count)))
    row_texts = [row_text_ids(row) for row in rows.select_columns(["anchor", "texts"])]
    return rows, SourceBatchSampler(rows["source"], row_texts, batch, [1.0], seed=seed)


def row_columns(rows):
    """The rows as sentence-transformers' columns ``anchor, positive, negative, neutral`` and ``score`` (the three
    candidates' gold scores against the anchor): one dataset row per row, so the same batches of indices hold the
    same texts."""
    from datasets import Dataset

    columns: dict[str, list] = {name: [] for name in ("anchor", *ST_CANDIDATE_COLUMNS, "score")}
    for row in rows:
        columns["anchor"].append(row["anchor"])
        for name, text in zip(ST_CANDIDATE_COLUMNS, row["texts"]):
            columns[name].append(text)
        columns["score"].append(row["scores"])
    return Dataset.from_dict(columns)


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


def our_parts(packed: bool, attention_dropout: float | None = None, compile_layers: bool = False,
              fast_dropout: bool = False):
    """The recipe's tokenizer, encoder (loaded as the recipe loads it, with these ``model`` settings) and objective
    (the recipe's default loss terms and weights)."""
    from ese_trainer.ese.arguments import ESEArguments
    from ese_trainer.losses.arguments import LossArguments
    from ese_trainer.modeling.arguments import ModelArguments, MoEArguments
    from ese_trainer.modeling.encoding import SentenceEncoder
    from ese_trainer.modeling.loading import load_tokenizer_and_encoder
    from ese_trainer.training.build import build_objective

    model_args = ModelArguments(model_name_or_path=MODEL_ID, attention_dropout=attention_dropout,
                                compile_layers=compile_layers, fast_dropout=fast_dropout)
    tokenizer, model = load_tokenizer_and_encoder(model_args, MoEArguments())
    encoder = SentenceEncoder(model, "mean", forward_chunks=1 if packed else 2, packed=packed)
    return tokenizer, encoder, build_objective(LossArguments(), ESEArguments(), model.config)


def run_ours(rows, sampler, batch: int, steps: int, packed: bool, bf16: bool, attention_dropout: float | None = None,
             fast_dropout: bool = False) -> float:
    from transformers import TrainingArguments

    from ese_trainer.data.collator import RowCollator
    from ese_trainer.training.trainer import ESETrainer

    tokenizer, encoder, objective = our_parts(packed, attention_dropout, fast_dropout=fast_dropout)
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


class STLoss(nn.Module):
    """Our loss terms as far as sentence-transformers has them, at our default weights, over one embedding of each
    column (``embed_columns``: the anchor column alone, the candidate columns merged into one forward):

    - ``same_texts`` (columns ``anchor``, ``positive``, ``negative``, ``neutral``; ``score``: the three gold
      scores): CoSENT + AnglE over the three scored pairs of every row, MNRL (query→doc) with every positive and hard
      negative of the batch a candidate;
    - pairs (columns ``sentence1``, ``sentence2``; ``score``): CoSENT + AnglE over every pair, MNRL over the
      positive pairs (score 1), whose other pairs' texts are its negatives.
    """

    def __init__(self, model, same_texts: bool) -> None:
        from sentence_transformers.sentence_transformer.losses import (
            AnglELoss,
            CoSENTLoss,
            MultipleNegativesRankingLoss,
        )

        from ese_trainer.losses.arguments import LossArguments

        super().__init__()
        self.model, self.same_texts, self.weights = model, same_texts, LossArguments()
        self.cosent, self.angle = CoSENTLoss(model), AnglELoss(model)
        self.mnrl = MultipleNegativesRankingLoss(model, directions=("query_to_doc",))

    def forward(self, sentence_features, labels: torch.Tensor) -> torch.Tensor:
        from sentence_transformers.base.losses.merged_forward import embed_columns

        embeddings = embed_columns(self.model, sentence_features)
        if self.same_texts:
            anchor, positive, negative, neutral = embeddings
            first, second = anchor.repeat(3, 1), torch.cat([positive, negative, neutral])
            scores = labels.T.reshape(-1)  # column by column, as the candidates were concatenated
            contrastive = self.mnrl.compute_loss_from_embeddings([anchor, positive, negative], None)
        else:
            (first, second), scores = embeddings, labels
            positive = labels >= 1.0
            contrastive = self.mnrl.compute_loss_from_embeddings([first[positive], second[positive]], None)
        weights = self.weights
        return (weights.cosent_w * self.cosent.compute_loss_from_embeddings([first, second], scores)
                + weights.ibn_w * contrastive
                + weights.angle_w * self.angle.compute_loss_from_embeddings([first, second], scores))


def fixed_batches(batches: list[list[int]]):
    """A sentence-transformers ``batch_sampler`` (a callable) yielding exactly ``batches``, in order."""
    from sentence_transformers.base.sampler import DefaultBatchSampler

    class FixedBatchSampler(DefaultBatchSampler):
        def __iter__(self):
            yield from batches

        def __len__(self) -> int:
            return len(batches)

    return lambda dataset, **kwargs: FixedBatchSampler(dataset, **kwargs)


def run_sentence_transformers(dataset, batches: list[list[int]], steps: int, bf16: bool, same_texts: bool) -> float:
    """``SentenceTransformerTrainer`` over ``dataset`` in exactly ``batches`` (:class:`STLoss`)."""
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from ese_trainer.hub_models import resolve_model_path

    model = SentenceTransformer(resolve_model_path(MODEL_ID), device="cpu")
    with tempfile.TemporaryDirectory() as output_dir:
        args = SentenceTransformerTrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=len(batches[0]), max_steps=steps,
            learning_rate=LEARNING_RATE, save_strategy="no", report_to="none", disable_tqdm=True,
            logging_steps=steps, dataloader_drop_last=True, use_cpu=True, seed=0, dataloader_pin_memory=False,
            bf16=bf16, batch_sampler=fixed_batches(batches))  # each step the texts of ours' step's rows
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                             loss=STLoss(model, same_texts))
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


ST_SAME_TEXTS, ST_PAIRS = "sentence-transformers, same texts", "sentence-transformers, pairs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32, help="rows per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CPU: AVX512-bf16) for every contender")
    parser.add_argument("--output_dir", default=str(RESULTS))
    args = parser.parse_args()
    rows, sampler = load_rows(args.steps, args.batch)
    batches = list(sampler)
    pairs, pair_batches = row_pairs(rows, batches)
    columns = row_columns(rows)
    runners = {
        "ours, packed": lambda: run_ours(rows, sampler, args.batch, args.steps, True, args.bf16),
        "ours, packed, attention dropout 0": lambda: run_ours(rows, sampler, args.batch, args.steps, True, args.bf16,
                                                              attention_dropout=0.0),
        "ours, packed, fast dropout": lambda: run_ours(rows, sampler, args.batch, args.steps, True, args.bf16,
                                                       fast_dropout=True),
        "ours, padded": lambda: run_ours(rows, sampler, args.batch, args.steps, False, args.bf16),
        ST_SAME_TEXTS: lambda: run_sentence_transformers(columns, batches, args.steps, args.bf16, same_texts=True),
        ST_PAIRS: lambda: run_sentence_transformers(pairs, pair_batches, args.steps, args.bf16, same_texts=False),
        "bare, packed": lambda: run_bare(rows, batches, True, args.bf16),
        "bare, padded": lambda: run_bare(rows, batches, False, args.bf16),
    }
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for repeat in range(args.repeats):
        for name, runner in runners.items():  # alternating, so drift affects every contender alike
            torch.manual_seed(repeat)
            seconds[name].append(runner())
            print(f"repeat {repeat + 1}: {name} {seconds[name][-1]:.1f} s", flush=True)

    # What each contender encodes: ours (and sentence-transformers on the same texts) every text of a batch's rows
    # once (anchors, then the others), sentence-transformers on pairs both sides of every pair (a premise once per
    # hypothesis).
    tokenizer, encoder, _ = our_parts(True)
    batch_texts = [[text for index in batch for text in (rows[index]["anchor"], *rows[index]["texts"])]
                   for batch in batches]
    batch_lengths = [[len(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
                     for texts in batch_texts]
    real_tokens = sum(map(sum, batch_lengths))
    pair_texts = list(pairs["sentence1"]) + list(pairs["sentence2"])
    encoded = {"rows": {"texts": sum(map(len, batch_texts)), "real_tokens": real_tokens},
               "pairs": {"texts": len(pair_texts), "real_tokens": real_token_count(tokenizer, pair_texts)}}
    layout = {name: "pairs" if name == ST_PAIRS else "rows" for name in runners}
    model = encoder.transformer
    gemms = gemm_floor(model.config, batch_lengths, args.bf16)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = optimizer_floor(trained, args.steps)
    floor = gemms["total_seconds"] + optimizer["seconds"]

    median = {name: statistics.median(times) for name, times in seconds.items()}
    rows_per_second = {name: args.steps * args.batch / value for name, value in median.items()}
    tokens_per_second = {name: encoded[layout[name]]["real_tokens"] / value for name, value in median.items()}
    fastest_st = min((ST_SAME_TEXTS, ST_PAIRS), key=median.get)
    ours = seconds["ours, packed"]
    speedups = {  # time of the contender in the denominator's place over ours, repeat by repeat
        f"ours packed / fastest sentence-transformers ({fastest_st})": paired_ratio(seconds[fastest_st], ours),
        f"ours packed / {ST_SAME_TEXTS}": paired_ratio(seconds[ST_SAME_TEXTS], ours),
        f"ours packed / {ST_PAIRS}": paired_ratio(seconds[ST_PAIRS], ours),
        "ours packed / ours padded": paired_ratio(seconds["ours, padded"], ours),
        "ours packed, attention dropout 0 / ours packed": paired_ratio(ours,
                                                                      seconds["ours, packed, attention dropout 0"]),
        "ours packed, fast dropout / ours packed": paired_ratio(ours, seconds["ours, packed, fast dropout"]),
        f"ours packed, fast dropout / fastest sentence-transformers ({fastest_st})": paired_ratio(
            seconds[fastest_st], seconds["ours, packed, fast dropout"]),
    }
    overheads = {  # time over time: above 1 is slower
        "ours packed over bare packed": paired_ratio(ours, seconds["bare, packed"]),
        "ours padded over bare padded": paired_ratio(seconds["ours, padded"], seconds["bare, padded"]),
        "ours packed over the compute floor": paired_ratio(ours, [floor] * len(ours)),
        "bare packed over the compute floor": paired_ratio(seconds["bare, packed"], [floor] * len(ours)),
    }
    command = "python -m bench.train_throughput " + " ".join(
        f"--{key}" + ("" if isinstance(value, bool) else f" {value}") for key, value in vars(args).items()
        if value is not False and key != "output_dir")
    machine = describe_machine()
    payload = {"command": command, "machine": machine, "model": MODEL_ID, "steps": args.steps, "batch": args.batch,
               "bf16": args.bf16, "rows": args.steps * args.batch, "pairs": len(pairs), "seconds": seconds,
               "rows_per_second": rows_per_second, "encoded": encoded, "layout": layout,
               "real_tokens": real_tokens, "real_tokens_per_second": tokens_per_second,
               "fastest_sentence_transformers": fastest_st, "speedups": speedups, "overheads": overheads,
               "compute_floor": {"gemms": gemms, "optimizer": optimizer, "floor_seconds": floor}}
    stem = "train_throughput" + ("_bf16" if args.bf16 else "")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = ["| contender | rows/s | texts encoded | real tokens/s | time over compute floor | runs (s) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {rows_per_second[name]:.1f} | {encoded[layout[name]]['texts']} | "
              f"{tokens_per_second[name]:.0f} | {median[name] / floor:.1f}x | "
              f"{', '.join(f'{t:.1f}' for t in seconds[name])} |" for name in runners]
    headline, *others = speedups.items()
    summary = "\n".join([
        f"# Training throughput (all-MiniLM-L6-v2, CPU, {'bf16 autocast' if args.bf16 else 'fp32'})", "",
        f"Command: `{command}`  ", f"Machine: {machine}", "",
        f"{args.steps} steps of {args.batch} SNLI dev rows ({args.steps * args.batch} rows, {len(pairs)} scored "
        f"pairs): ours and sentence-transformers on the same texts encode {encoded['rows']['texts']} texts "
        f"({real_tokens} real tokens), sentence-transformers on pairs {encoded['pairs']['texts']} "
        f"({encoded['pairs']['real_tokens']}).", "", *lines, "",
        f"**{headline[0]}: {describe_ratio(headline[1])}**", "",
        *(f"- {name}: {describe_ratio(ratio)}" for name, ratio in others),
        *(f"- overhead of {name}: {describe_ratio(ratio, percent_over=True)}" for name, ratio in overheads.items()
          if "floor" not in name),
        *(f"- {name}: {describe_ratio(ratio)}" for name, ratio in overheads.items() if "floor" in name), "",
        f"Compute floor: the step's GEMMs, forward and backward, at their shapes' measured rates, and the optimizer's "
        f"memory traffic ({trained / 1e6:.1f}M trained parameters x {optimizer['bytes_per_parameter']} B x "
        f"{args.steps} steps) at the measured copy bandwidth:", "", *floor_table(gemms, optimizer), ""])
    (output_dir / f"{stem}.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
