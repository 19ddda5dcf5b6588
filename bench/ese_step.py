"""Train-step time of each ESE schedule against plain training, and what the PCA target's SVD costs.

    python -m bench.ese_step [--steps 10] [--warmup 2] [--batch_size 32]

One training step (forward + the recipe's objective + backward + AdamW) of all-MiniLM-L6-v2 on the same batch of
``batch_size`` real SNLI dev rows (a premise with its hypotheses, drawn as the recipe draws a batch and collated by
``RowCollator``: the anchors, then the other texts; packed forward, fp32, CPU) for: plain training, ``espresso``
with the PCA target (its SVD every step, and every 10 steps: ``pca_refresh_steps``), ``espresso`` with the learned
(MoE head) target, and ``starbucks`` (the default diagonal). Steps are taken round-robin (one of each per round, the
order rotated), the median reported with its ratio to plain training. Separately, the seconds of the PCA target
alone for the five student layers and the last (one batched SVD). Results: ``bench/results/ese_step.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.machine import describe_machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
VARIANTS = {
    "plain": {},
    "espresso, pca target": {"ese_enabled": True, "ese_schedule": "espresso"},
    "espresso, pca target refreshed every 10 steps": {"ese_enabled": True, "ese_schedule": "espresso",
                                                      "ese_pca_refresh_steps": 10},
    "espresso, learned (moe) target": {"ese_enabled": True, "ese_schedule": "espresso",
                                       "ese_compression_target": "moe"},
    "starbucks": {"ese_enabled": True, "ese_schedule": "starbucks"},
}


def snli_batch(batch_size: int, seed: int = 0) -> list[dict]:
    """The first batch of ``batch_size`` SNLI dev rows the recipe's sampler draws (one source, no text twice)."""
    from ese_trainer.data.batching import SourceBatchSampler
    from ese_trainer.data.collator import row_text_ids
    from ese_trainer.data.sources import TrainSource, load_train_sources

    source = TrainSource.parse({"source": str(REPO / "data" / "SNLI"), "split": "dev"}, 0)
    rows, _ = load_train_sources([source], seed)
    row_texts = [row_text_ids(row) for row in rows.select_columns(["anchor", "texts"])]
    sampler = SourceBatchSampler(rows["source"], row_texts, batch_size, [1.0], seed=seed)
    return [rows[index] for index in next(iter(sampler))]


def build(ese: dict):
    from transformers import AutoModel

    from ese_trainer.ese.arguments import ESEArguments
    from ese_trainer.hub_models import resolve_model_path
    from ese_trainer.losses.arguments import LossArguments
    from ese_trainer.modeling.encoding import SentenceEncoder
    from ese_trainer.training.build import build_objective
    from ese_trainer.training.training_model import TrainingModel

    model = AutoModel.from_pretrained(resolve_model_path(MODEL_ID))
    model.pooler.requires_grad_(False)
    torch.manual_seed(0)
    training_model = TrainingModel(SentenceEncoder(model, "mean", packed=True),
                                   build_objective(LossArguments(), ESEArguments(**ese), model.config)).train()
    parameters = [p for p in training_model.parameters() if p.requires_grad]
    return training_model, torch.optim.AdamW(parameters, lr=2e-5, fused=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32, help="rows per batch")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from ese_trainer.data.collator import RowCollator
    from ese_trainer.ese.compression import pca_projection
    from ese_trainer.hub_models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(MODEL_ID))
    batch = RowCollator(tokenizer, 128)(snli_batch(args.batch_size))
    texts = int(batch["input_ids"].shape[0])
    contenders = {name: build(ese) for name, ese in VARIANTS.items()}
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_index in range(args.warmup + args.steps):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            model, optimizer = contenders[name]
            started = time.perf_counter()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if round_index >= args.warmup:
                seconds[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    plain_model = contenders["plain"][0]
    with torch.no_grad():
        states = plain_model.encoder.transformer(**{k: batch[k] for k in ("input_ids", "attention_mask")},
                                                 output_hidden_states=True).hidden_states
    stacked = torch.stack([states[layer].mean(dim=1) for layer in range(1, 7)])  # 6 layers x N texts x 384
    svd = []
    for _ in range(args.steps):
        started = time.perf_counter()
        pca_projection(stacked, 128)
        svd.append(time.perf_counter() - started)
    svd_seconds = statistics.median(svd)
    command = "python -m bench.ese_step " + " ".join(sys.argv[1:])
    payload = {"command": command.strip(), "machine": describe_machine(), "model": MODEL_ID,
               "batch_rows": args.batch_size, "batch_texts": texts, "seconds_per_step": median,
               "ratio_to_plain": {name: value / median["plain"] for name, value in median.items()},
               "pca_svd_seconds_6_layers": svd_seconds, "raw_seconds": seconds}
    results = REPO / "bench" / "results"
    (results / "ese_step.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = ["| schedule | s/step (median) | x plain |", "|---|---|---|"]
    lines += [f"| {name} | {median[name]:.3f} | {median[name] / median['plain']:.2f} |" for name in names]
    summary = "\n".join([
        "# ESE schedules: step cost", "", f"Command: `{payload['command']}`  ", f"Machine: {payload['machine']}", "",
        f"all-MiniLM-L6-v2, one batch of {args.batch_size} SNLI dev rows ({texts} texts), packed forward, fp32; "
        f"{args.steps} timed "
        "rounds after warm-up, round-robin.", "", *lines, "",
        f"The PCA target alone (one batched SVD of six 384 x 384 matrices): {1000 * svd_seconds:.0f} ms per step "
        f"({100 * svd_seconds / median['plain']:.0f}% of a plain step).", ""])
    (results / "ese_step.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
