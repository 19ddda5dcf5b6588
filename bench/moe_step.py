"""Train-step time of the MoE encoder vs. the dense one it was converted from, normalised by their FLOPs.

    python -m bench.moe_step [--model sentence-transformers/all-MiniLM-L6-v2] [--batch_size 32] [--steps 10]
                             [--warmup 2] [--num_experts 4] [--top_k 2] [--seed 0]
                             [--output bench/results/moe_step.json]

What is measured: one training step, on the *same* batch for every model: ``batch_size`` real SNLI rows
(``data/SNLI``, split ``dev``; a row is a premise with its hypotheses, about 3.75 texts per row), the first batch
the recipe's sampler draws (:class:`ese_trainer.data.batching.SourceBatchSampler`: no text twice), tokenised by the
model's own tokenizer (:class:`ese_trainer.data.collator.RowCollator`: the anchors, then the other texts; max
length 128, padded to the longest text), fp32 on CPU:

- forward of every text in one pass (:class:`ese_trainer.modeling.encoding.SentenceEncoder`, mean pooling,
  1 chunk);
- the recipe's objective (:func:`ese_trainer.training.build.build_objective` with the default loss arguments:
  CoSENT + in-batch negatives + AnglE, weights 1, scale 20, plus for the MoE encoder its router terms
  ``router_aux_loss_coef · loss_router_aux + router_z_loss_coef · loss_router_z``);
- backward, ``torch.optim.AdamW`` step (fused when the CPU build supports it), ``zero_grad``.

Three models take part: the dense encoder and its MoE conversions (:func:`ese_trainer.modeling.build_moe`,
experts in every layer) of both ``moe_type``\\ s — ``upcycled`` (``num_experts`` copies of the full FFN, top-k
routed: each token runs ``top_k`` full-width FFNs) and ``residual`` (the dense FFN kept plus ``top_k`` experts
of width ``intermediate_size // num_experts``). After ``--warmup`` untimed steps, ``--steps`` timed steps of each
model are taken round-robin (one step of each model per round, the order rotated every round), so drift and
other processes' load on the CPU hit every model alike; the median seconds per step is reported.

Why the FLOP-normalised ratio is the fair comparison: an MoE step is *meant* to do more arithmetic than the
dense step (top-2 of full-width upcycled experts runs each token through two FFNs), so ``moe / dense`` step time
alone mixes the extra work the architecture asks for with the cost of *how* it is done (routing, gathering
tokens per expert, scattering them back, small per-expert matmuls, more parameters for AdamW). The FLOPs of one
full forward + backward of the same batch are counted for each model with
:class:`torch.utils.flop_counter.FlopCounterMode` (matmuls and attention; not hand-estimated — note the MoE
block routes only non-padding tokens, the dense FFN also runs on padding), and
``overhead = (t_moe / t_dense) / (flops_moe / flops_dense)`` is the time the MoE step takes per unit of work
relative to the dense step: 1.0 means the MoE implementation is as efficient as the dense one. The target is
``overhead <= 1.15`` (MoE step time within 1.15x of dense step time x FLOP ratio).

Results go to ``--output`` (JSON) and a Markdown table beside it (same name, ``.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from bench.machine import describe_machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
MOE_TYPES = ("upcycled", "residual")
LEARNING_RATE = 2e-5
MAX_SEQ_LENGTH = 128
TARGET_OVERHEAD = 1.15


@dataclass
class Contender:
    """One model under test, with its optimizer, the function computing its loss, and what was measured."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    seconds: list[float] = field(default_factory=list)
    phases: dict[str, list[float]] = field(
        default_factory=lambda: {"forward_loss": [], "backward": [], "optimizer": []})


def load_batch(model_path: str, batch_size: int, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One collated batch of ``batch_size`` real SNLI dev rows (the first the recipe's sampler draws) and a
    description of its tokens."""
    from transformers import AutoTokenizer

    from ese_trainer.data.batching import SourceBatchSampler
    from ese_trainer.data.collator import RowCollator, row_text_ids
    from ese_trainer.data.sources import TrainSource, load_train_sources

    source = TrainSource.parse({"source": str(REPO / "data" / "SNLI"), "split": "dev"}, 0)
    rows, _ = load_train_sources([source], seed)
    if len(rows) < batch_size:
        raise SystemExit(f"data/SNLI dev has only {len(rows)} rows, fewer than --batch_size {batch_size}")
    row_texts = [row_text_ids(row) for row in rows.select_columns(["anchor", "texts"])]
    sampler = SourceBatchSampler(rows["source"], row_texts, batch_size, [1.0], seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    batch = RowCollator(tokenizer, MAX_SEQ_LENGTH)([rows[index] for index in next(iter(sampler))])
    batch = {key: value for key, value in batch.items() if isinstance(value, torch.Tensor)}
    mask = batch["attention_mask"]
    info = {"rows": batch_size, "texts": int(mask.shape[0]), "padded_length": int(mask.shape[1]),
            "padded_tokens": int(mask.numel()),
            "real_tokens": int(mask.sum()), "padding_fraction": 1.0 - float(mask.sum()) / mask.numel()}
    return batch, info


def make_loss_fn(model: nn.Module) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """The step's loss: the recipe's own objective (default loss arguments) on ``model``, one forward pass."""
    from ese_trainer.ese.arguments import ESEArguments
    from ese_trainer.losses.arguments import LossArguments
    from ese_trainer.modeling.encoding import SentenceEncoder
    from ese_trainer.training.build import build_objective
    from ese_trainer.training.training_model import TrainingModel

    training_model = TrainingModel(SentenceEncoder(model, "mean", forward_chunks=1),
                                   build_objective(LossArguments(), ESEArguments(), model.config))

    def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return training_model(**batch).loss

    return loss_fn


def make_optimizer(model: nn.Module) -> tuple[torch.optim.Optimizer, bool]:
    """AdamW over the trainable parameters, fused when this torch build supports it on CPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0, fused=True), True
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0), False


def build_models(model_path: str, args: argparse.Namespace) -> dict[str, nn.Module]:
    """The dense encoder and its MoE conversion of each ``moe_type``, in train mode."""
    from transformers import AutoModel

    from ese_trainer.modeling import build_moe

    models: dict[str, nn.Module] = {}
    torch.manual_seed(args.seed)
    models["dense"] = AutoModel.from_pretrained(model_path)
    for moe_type in MOE_TYPES:
        torch.manual_seed(args.seed)  # the router's initialisation
        models[moe_type] = build_moe(model_path, num_experts=args.num_experts, num_experts_per_tok=args.top_k,
                                     moe_layers="all", moe_type=moe_type)
    for model in models.values():
        model.pooler.requires_grad_(False)  # mean pooling: the pooler gets no gradient
        model.train()
    return models


def count_flops(contender: Contender, batch: dict[str, torch.Tensor]) -> int:
    """FLOPs of one full forward + backward (loss included) of ``batch``, counted by FlopCounterMode."""
    counter = FlopCounterMode(display=False)
    with counter:
        contender.loss_fn(batch).backward()
    contender.optimizer.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def train_step(contender: Contender, batch: dict[str, torch.Tensor], record: bool) -> float:
    started = time.perf_counter()
    loss = contender.loss_fn(batch)
    forward_done = time.perf_counter()
    loss.backward()
    backward_done = time.perf_counter()
    contender.optimizer.step()
    contender.optimizer.zero_grad(set_to_none=True)
    finished = time.perf_counter()
    if not torch.isfinite(loss):
        raise RuntimeError(f"{contender.name}: non-finite loss {loss.item()}")
    if record:
        contender.seconds.append(finished - started)
        contender.phases["forward_loss"].append(forward_done - started)
        contender.phases["backward"].append(backward_done - forward_done)
        contender.phases["optimizer"].append(finished - backward_done)
    return finished - started


def routed_tokens(model: nn.Module, batch: dict[str, torch.Tensor], top_k: int) -> dict[str, int]:
    """Tokens each MoE layer routes per step (the non-padding tokens) and the token-expert slots of all layers."""
    layers = len(model.config.moe_layer_indices)
    per_layer = int(batch["attention_mask"].sum())
    return {"moe_layers": layers, "tokens_per_layer": per_layer, "expert_slots_per_layer": per_layer * top_k,
            "expert_slots_per_step": per_layer * top_k * layers}


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def active_parameter_count(model: nn.Module, top_k: int) -> int:
    """Parameters one token uses: everything but the experts it is not routed to."""
    expert_params = sum(p.numel() for name, p in model.named_parameters() if ".moe.experts." in name)
    num_experts = getattr(model.config, "num_experts", 0)
    if not num_experts:
        return parameter_count(model)
    return parameter_count(model) - expert_params + expert_params * top_k // num_experts


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_markdown(path: Path, payload: dict) -> str:
    settings, results = payload["settings"], payload["results"]
    batch = settings["batch"]
    lines = [
        "# MoE vs. dense train-step time, normalised by FLOPs (CPU, fp32)", "",
        f"Command: `{payload['command']}`  ", f"Machine: {payload['machine']}", "",
        f"Model {settings['model']}, {settings['num_experts']} experts, top-{settings['top_k']}, experts in all "
        f"layers; one batch of {settings['batch_size']} SNLI dev rows = {batch['texts']} texts, padded to "
        f"{batch['padded_length']} tokens ({batch['real_tokens']} real of {batch['padded_tokens']}, "
        f"{100 * batch['padding_fraction']:.0f}% padding); {settings['warmup']} warm-up + {settings['steps']} timed "
        f"steps per model, round-robin; AdamW {'fused' if settings['fused_adamw'] else 'default (not fused)'}.", "",
        "| moe_type | dense s/step | MoE s/step | time ratio | dense GFLOP | MoE GFLOP | FLOP ratio | "
        f"overhead (target ≤ {TARGET_OVERHEAD}) | overhead, fastest steps | paired overhead | "
        "params dense / MoE (active) | tokens routed per layer (expert slots per step) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for moe_type, result in results.items():
        verdict = "ok" if result["overhead"] <= TARGET_OVERHEAD else "**over**"
        routing = result["routing"]
        lines.append(
            f"| {moe_type} | {result['dense_s_per_step']:.3f} | {result['moe_s_per_step']:.3f} | "
            f"{result['time_ratio']:.2f} | {result['dense_flops'] / 1e9:.1f} | {result['moe_flops'] / 1e9:.1f} | "
            f"{result['flop_ratio']:.2f} | {result['overhead']:.2f} ({verdict}) | {result['overhead_min']:.2f} | "
            f"{result['overhead_paired']:.2f} | "
            f"{result['dense_params'] / 1e6:.1f}M / {result['moe_params'] / 1e6:.1f}M "
            f"({result['moe_active_params'] / 1e6:.1f}M) | {routing['tokens_per_layer']} "
            f"({routing['expert_slots_per_step']}) |")
    phases = payload["phases_median_s"]
    lines += ["", "Median seconds per phase (forward + loss / backward / optimizer): "
              + "; ".join(f"{name} {p['forward_loss']:.3f} / {p['backward']:.3f} / {p['optimizer']:.3f}"
                          for name, p in phases.items()) + ".",
              "", "`overhead = time ratio / FLOP ratio`: 1.0 means the MoE step costs exactly its extra arithmetic. "
              "The dense model is one measurement shared by both rows. *Fastest steps*: the same ratio from each "
              "model's fastest timed step (the least disturbed by other processes on the CPU); *paired*: the median "
              "over rounds of (MoE step / dense step of the same round) / FLOP ratio.", ""]
    summary = "\n".join(lines)
    path.write_text(summary)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL_ID, help="dense BERT checkpoint (Hub id or folder)")
    parser.add_argument("--batch_size", type=int, default=32, help="rows per batch (a premise with its hypotheses: "
                        "about 3.75 texts per row)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model before timing")
    parser.add_argument("--num_experts", type=int, default=4)
    parser.add_argument("--top_k", type=int, default=2, help="experts per token (num_experts_per_tok)")
    parser.add_argument("--output", type=Path, default=RESULTS / "moe_step.json",
                        help="results JSON; the Markdown table is written beside it (.md)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 2:
        parser.error("--steps must be >= 1, --warmup >= 0 and --batch_size >= 2")

    from ese_trainer.hub_models import resolve_model_path

    torch.manual_seed(args.seed)
    model_path = resolve_model_path(args.model)
    batch, batch_info = load_batch(model_path, args.batch_size, args.seed)
    print(f"batch: {batch_info['texts']} texts x {batch_info['padded_length']} tokens "
          f"({100 * batch_info['padding_fraction']:.0f}% padding)", flush=True)
    contenders, fused = [], True
    for name, model in build_models(model_path, args).items():
        optimizer, is_fused = make_optimizer(model)
        fused = fused and is_fused
        contenders.append(Contender(name, model, optimizer, make_loss_fn(model)))

    flops = {}
    for contender in contenders:
        flops[contender.name] = count_flops(contender, batch)
        print(f"{contender.name}: {flops[contender.name] / 1e9:.2f} GFLOP per forward + backward", flush=True)

    rounds = args.warmup + args.steps
    progress = tqdm(range(rounds), desc="rounds (one step of each model)", unit="round")
    for round_index in progress:
        shift = round_index % len(contenders)  # rotate the order so no model always follows the same one
        for contender in contenders[shift:] + contenders[:shift]:
            train_step(contender, batch, record=round_index >= args.warmup)
        if round_index >= args.warmup:
            progress.set_postfix({c.name: f"{median(c.seconds):.3f}s" for c in contenders})
    progress.close()

    by_name = {contender.name: contender for contender in contenders}
    dense = by_name["dense"]
    dense_seconds = median(dense.seconds)
    results = {}
    for moe_type in MOE_TYPES:
        moe = by_name[moe_type]
        moe_seconds = median(moe.seconds)
        time_ratio = moe_seconds / dense_seconds
        flop_ratio = flops[moe_type] / flops["dense"]
        paired = statistics.median(m / d for m, d in zip(moe.seconds, dense.seconds))
        results[moe_type] = {
            "dense_s_per_step": dense_seconds, "moe_s_per_step": moe_seconds, "time_ratio": time_ratio,
            "dense_flops": flops["dense"], "moe_flops": flops[moe_type], "flop_ratio": flop_ratio,
            "overhead": time_ratio / flop_ratio, "meets_target": time_ratio / flop_ratio <= TARGET_OVERHEAD,
            "dense_params": parameter_count(dense.model), "moe_params": parameter_count(moe.model),
            "moe_active_params": active_parameter_count(moe.model, args.top_k),
            "expert_intermediate_size": moe.model.config.expert_intermediate_size,
            "routing": routed_tokens(moe.model, batch, args.top_k),
            "dense_s_per_step_min": min(dense.seconds), "moe_s_per_step_min": min(moe.seconds),
            "overhead_min": min(moe.seconds) / min(dense.seconds) / flop_ratio,
            "overhead_paired": paired / flop_ratio,
            "dense_seconds": dense.seconds, "moe_seconds": moe.seconds,
        }
    settings = {"model": args.model, "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
                "num_experts": args.num_experts, "top_k": args.top_k, "moe_layers": "all", "seed": args.seed,
                "data": "data/SNLI dev rows", "max_seq_length": MAX_SEQ_LENGTH, "pooling": "mean", "forward_chunks": 1,
                "loss": "the recipe's objective: cosent + ibn + angle (weights 1, scale 20) + the MoE router terms",
                "optimizer": "AdamW", "fused_adamw": fused, "lr": LEARNING_RATE,
                "torch_threads": torch.get_num_threads(), "target_overhead": TARGET_OVERHEAD, "batch": batch_info}
    # thread settings from the environment change what is measured: keep them in the recorded command
    env = [f"{name}={os.environ[name]}" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if name in os.environ]
    command = " ".join([*env, "python -m bench.moe_step", *sys.argv[1:]])
    payload = {"machine": describe_machine(), "settings": settings, "command": command, "results": results,
               "phases_median_s": {c.name: {phase: median(times) for phase, times in c.phases.items()}
                                   for c in contenders}}
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(payload, indent=2) + "\n")
    summary = write_markdown(output.with_suffix(".md"), payload)
    print(summary)
    print(f"wrote {output} and {output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
