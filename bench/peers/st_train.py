"""Fine-tune a start model with sentence-transformers' own ``SentenceTransformerTrainer`` (a peer contender).

    python -m bench.peers.st_train --model START --triplets_jsonl TRIPLETS --mode mnrl --output_dir OUT \\
        --dev_file data/STS/STSBenchmark/sts-dev.csv --eval_every 50 --learning_rate 2e-4 --batch_size 32

Every set-up trains on sentence-transformers' NLI triplets (``--triplets_jsonl``: anchor, positive, negative), built
the way its NLI example and the all-nli ``triplet`` subset build them (both (premise, entailment, contradiction) and
(entailment, premise, contradiction)), with the no-duplicates batch sampler, each the way a sentence-transformers
user would write it:

- ``mnrl``: ``MultipleNegativesRankingLoss``, its recommended NLI loss;
- ``gist``: ``GISTEmbedLoss``, the start model as its guide (``--guide``), its defaults;
- ``combined``: our recipe's three terms at its weights (``--weights`` cosent ibn angle, default 1 10 1) with
  sentence-transformers' own losses on one merged forward: ``MultipleNegativesRankingLoss`` over the triplets (the
  hard negative in every anchor's softmax), ``CoSENTLoss`` and ``AnglELoss`` over the batch's scored pairs
  (anchor, positive) = 1 and (anchor, negative) = 0. A triplet has no place for NLI's neutral pairs.

Rows of a ``sts`` source (``--pairs_jsonl`` rows whose ``source`` is in ``--sts_sources``) are trained with
``CoSENTLoss`` alone, as their own dataset: each batch comes from one dataset (the proportional multi-dataset
sampler). STS-B dev is scored by our evaluator inside the trainer (``bench.peers.dev_callback``); the best weights go
to ``OUT/best`` (a sentence-transformers folder) and the scores to ``OUT/dev_record.json``.
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
    parser.add_argument("--triplets_jsonl", required=True, help="rows: anchor, positive, negative")
    parser.add_argument("--pairs_jsonl", help="rows: sentence1, sentence2, score in [0, 1], source (STS sources)")
    parser.add_argument("--sts_sources", nargs="*", default=[], help="source names trained with CoSENT alone")
    parser.add_argument("--mode", choices=["combined", "mnrl", "gist"], required=True)
    parser.add_argument("--guide", help="the guide model of mode gist (default: --model, the start model)")
    parser.add_argument("--weights", type=float, nargs=3, default=(1.0, 10.0, 1.0), metavar=("COSENT", "IBN", "ANGLE"),
                        help="mode combined: the terms' weights (our recipe's defaults)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--learning_rate", type=float, required=True)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=1.0, help="passes over every dataset")
    parser.add_argument("--warmup_ratio", type=float, default=0.1)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--scale", type=float, default=20.0)
    parser.add_argument("--dev_file", required=True, help="STS-B dev, scored every --eval_every steps")
    parser.add_argument("--eval_every", type=int, required=True)
    parser.add_argument("--half_step", type=int, default=0, help="successive halving: the step of the cut")
    parser.add_argument("--keep_at_least", type=float, help="successive halving: stop at --half_step below this")
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

    from bench.peers.dev_callback import DevScoring, HalvingCut
    from ese_trainer.data import load_sts_pairs
    from ese_trainer.evaluation.sts import evaluate_sts

    class CombinedLoss(torch.nn.Module):
        """cosent_w·CoSENT + ibn_w·MNRL + angle_w·AnglE on one merged forward of (anchor, positive, negative)."""

        def __init__(self, model: SentenceTransformer, weights: tuple[float, float, float], scale: float) -> None:
            super().__init__()
            self.model, self.weights = model, weights
            self.cosent, self.angle = CoSENTLoss(model, scale=scale), AnglELoss(model, scale=scale)
            self.mnrl = MultipleNegativesRankingLoss(model, scale=scale)

        def forward(self, sentence_features, labels: torch.Tensor | None) -> torch.Tensor:
            from sentence_transformers.base.losses.merged_forward import embed_columns

            anchor, positive, negative = embed_columns(self.model, sentence_features)
            pairs = [torch.cat([anchor, anchor]), torch.cat([positive, negative])]
            scores = torch.cat([torch.ones(len(anchor)), torch.zeros(len(anchor))]).to(anchor.device)
            cosent_w, ibn_w, angle_w = self.weights
            return (cosent_w * self.cosent.compute_loss_from_embeddings(pairs, scores)
                    + ibn_w * self.mnrl.compute_loss_from_embeddings([anchor, positive, negative], None)
                    + angle_w * self.angle.compute_loss_from_embeddings(pairs, scores))

    torch.manual_seed(args.seed)
    model = SentenceTransformer(args.model, device="cpu")
    triplets = read_jsonl(args.triplets_jsonl)
    datasets = {"nli": Dataset.from_dict({key: [row[key] for row in triplets] for key in ("anchor", "positive",
                                                                                          "negative")})}
    if args.mode == "mnrl":
        losses = {"nli": MultipleNegativesRankingLoss(model, scale=args.scale)}
    elif args.mode == "gist":
        losses = {"nli": GISTEmbedLoss(model, SentenceTransformer(args.guide or args.model, device="cpu"))}
    else:
        losses = {"nli": CombinedLoss(model, tuple(args.weights), args.scale)}
    sts_rows = read_jsonl(args.pairs_jsonl) if args.sts_sources else []
    for name in args.sts_sources:
        chosen = [row for row in sts_rows if row["source"] == name]
        datasets[name] = Dataset.from_dict({key: [row[key] for row in chosen]
                                            for key in ("sentence1", "sentence2", "score")})
        losses[name] = CoSENTLoss(model, scale=args.scale)
    single = len(datasets) == 1

    dev_pairs = {"dev": load_sts_pairs(args.dev_file, name="dev")}

    def dev_score() -> float:
        training = model.training
        score = evaluate_sts(model[0].auto_model, model.tokenizer, dev_pairs, "mean", 128, 64,
                             show_progress=False)["dev"]
        model.train(training)
        return score

    scoring = DevScoring(dev_score, model.state_dict, args.eval_every,
                         HalvingCut(args.half_step, args.keep_at_least),
                         record=os.path.join(args.output_dir, "dev_record.json"))
    training_args = SentenceTransformerTrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_ratio, weight_decay=args.weight_decay,
        lr_scheduler_type="linear", seed=args.seed, save_strategy="no", report_to="none", disable_tqdm=True,
        logging_steps=max(1, args.eval_every // 3), dataloader_drop_last=True, use_cpu=True,
        dataloader_pin_memory=False, batch_sampler=BatchSamplers.NO_DUPLICATES,
        multi_dataset_batch_sampler=MultiDatasetBatchSamplers.PROPORTIONAL)
    trainer = SentenceTransformerTrainer(model=model, args=training_args,
                                         train_dataset=datasets["nli"] if single else datasets,
                                         loss=losses["nli"] if single else losses, callbacks=[scoring])
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    model.load_state_dict(scoring.best_weights)
    model.save(os.path.join(args.output_dir, "best"))
    print(f"[st_train] {args.mode}: {trainer.state.global_step} optimizer steps in {seconds:.0f} s, best dev "
          f"{max(scoring.dev_by_step.values()):.2f}, datasets { {name: len(data) for name, data in datasets.items()} }",
          flush=True)


if __name__ == "__main__":
    main()
