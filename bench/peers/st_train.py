"""Fine-tune a start model with sentence-transformers' own ``SentenceTransformerTrainer`` (a peer contender).

    python bench/peers/st_train.py --model START --pairs_jsonl PAIRS --mode combined --output_dir OUT \\
        --learning_rate 2e-5 --batch_size 32 --epochs 1 --seed 42 --save_steps 75

Three set-ups, each the way a sentence-transformers user would write it:

- ``combined``: the three terms of our recipe with sentence-transformers' own losses — ``CoSENTLoss`` and
  ``AnglELoss`` on every pair with its score, ``MultipleNegativesRankingLoss`` (query→doc and query→query, both
  ways) on the pairs whose score is 1 (its positives), summed on one embedding of each column.
- ``mnrl``: its recommended NLI set-up: ``MultipleNegativesRankingLoss`` on (anchor, positive, negative) triplets
  with the no-duplicates batch sampler (``--triplets_jsonl``);
- ``gist``: ``GISTEmbedLoss`` on the same triplets, the start model as its guide (``--guide``), its defaults
  (temperature 0.01, anchors and positives contrasted too), no-duplicates sampler.

Rows of a ``sts`` source (``source`` column, ``--sts_sources``) are trained with ``CoSENTLoss`` alone, as their
own dataset: each batch comes from one dataset (the proportional multi-dataset sampler). Checkpoints every
``--save_steps`` steps (and the last) are sentence-transformers folders, for selection on STS-B dev.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs_jsonl", required=True, help="rows: sentence1, sentence2, score in [0, 1], source")
    parser.add_argument("--triplets_jsonl", help="rows: anchor, positive, negative (mode mnrl)")
    parser.add_argument("--sts_sources", nargs="*", default=[], help="source names trained with CoSENT alone")
    parser.add_argument("--mode", choices=["combined", "mnrl", "gist"], required=True)
    parser.add_argument("--guide", help="the guide model of mode gist (default: --model, the start model)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--learning_rate", type=float, required=True)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=1.0, help="passes over every dataset")
    parser.add_argument("--max_steps", type=int, default=-1, help="optimizer steps instead of --epochs (a time "
                        "budget)")
    parser.add_argument("--warmup_ratio", type=float, default=0.1)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--save_steps", type=int, required=True)
    parser.add_argument("--scale", type=float, default=20.0)
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.base.sampler import BatchSamplers, MultiDatasetBatchSamplers
    from sentence_transformers.sentence_transformer.losses import (
        AnglELoss,
        CoSENTLoss,
        GISTEmbedLoss,
        MultipleNegativesRankingLoss,
    )
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    class CombinedLoss(torch.nn.Module):
        """CoSENT + AnglE on every pair, MNRL (q→d and q→q, both ways) on the positive pairs, one forward."""

        def __init__(self, model: SentenceTransformer, scale: float) -> None:
            super().__init__()
            self.model = model
            self.cosent, self.angle = CoSENTLoss(model, scale=scale), AnglELoss(model, scale=scale)
            self.mnrl = MultipleNegativesRankingLoss(model, scale=scale,
                                                     directions=("query_to_doc", "query_to_query"))

        def forward(self, sentence_features, labels: torch.Tensor) -> torch.Tensor:
            from sentence_transformers.base.losses.merged_forward import embed_columns

            emb_a, emb_b = embed_columns(self.model, sentence_features)
            loss = (self.cosent.compute_loss_from_embeddings([emb_a, emb_b], labels)
                    + self.angle.compute_loss_from_embeddings([emb_a, emb_b], labels))
            positive = labels >= 1.0
            if positive.any():
                a, b = emb_a[positive], emb_b[positive]
                loss = loss + (self.mnrl.compute_loss_from_embeddings([a, b], labels[positive])
                               + self.mnrl.compute_loss_from_embeddings([b, a], labels[positive])) / 2
            return loss

    torch.manual_seed(args.seed)
    model = SentenceTransformer(args.model, device="cpu")
    rows = read_jsonl(args.pairs_jsonl)
    sts_rows = [row for row in rows if row["source"] in args.sts_sources]
    datasets, losses = {}, {}
    if args.mode == "combined":
        nli_rows = [row for row in rows if row["source"] not in args.sts_sources]
        datasets["nli"] = Dataset.from_dict({key: [row[key] for row in nli_rows]
                                             for key in ("sentence1", "sentence2", "score")})
        losses["nli"] = CombinedLoss(model, args.scale)
    else:
        triplets = read_jsonl(args.triplets_jsonl)
        datasets["nli"] = Dataset.from_dict({key: [row[key] for row in triplets]
                                             for key in ("anchor", "positive", "negative")})
        if args.mode == "mnrl":
            losses["nli"] = MultipleNegativesRankingLoss(model, scale=args.scale)
        else:
            losses["nli"] = GISTEmbedLoss(model, SentenceTransformer(args.guide or args.model, device="cpu"))
    for name in args.sts_sources:
        chosen = [row for row in sts_rows if row["source"] == name]
        datasets[name] = Dataset.from_dict({key: [row[key] for row in chosen]
                                            for key in ("sentence1", "sentence2", "score")})
        losses[name] = CoSENTLoss(model, scale=args.scale)
    single = len(datasets) == 1
    training_args = SentenceTransformerTrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch_size, max_steps=args.max_steps,
        num_train_epochs=args.epochs,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_ratio, weight_decay=args.weight_decay,
        lr_scheduler_type="linear", seed=args.seed, save_strategy="steps", save_steps=args.save_steps,
        save_only_model=True,
        report_to="none", disable_tqdm=True, logging_steps=max(1, args.save_steps // 3), dataloader_drop_last=True,
        use_cpu=True, dataloader_pin_memory=False,
        batch_sampler=BatchSamplers.NO_DUPLICATES if args.mode != "combined" else BatchSamplers.BATCH_SAMPLER,
        multi_dataset_batch_sampler=MultiDatasetBatchSamplers.PROPORTIONAL)
    trainer = SentenceTransformerTrainer(model=model, args=training_args,
                                         train_dataset=datasets["nli"] if single else datasets,
                                         loss=losses["nli"] if single else losses)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    trainer.save_model(os.path.join(args.output_dir, f"checkpoint-{trainer.state.global_step}"))
    with open(os.path.join(args.output_dir, "st_train_meta.json"), "w") as handle:
        json.dump({"mode": args.mode, "steps": trainer.state.global_step, "train_seconds": round(seconds, 1),
                   "datasets": {name: len(data) for name, data in datasets.items()}}, handle, indent=2)
    print(f"[st_train] {args.mode}: {trainer.state.global_step} optimizer steps in {seconds:.0f} s, datasets "
          f"{ {name: len(data) for name, data in datasets.items()} }", flush=True)


if __name__ == "__main__":
    main()
