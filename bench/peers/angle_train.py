"""Fine-tune a start model with AnglE's OWN trainer (angle-emb 0.6.1, ``AnglE.fit``) on CPU, offline.

Run with the AnglE venv's python (see ``bench/peers/setup_angle_venv.sh``), not the project's .venv, from the
repository root (STS-B dev is scored by our evaluator, imported from the checkout):

    OMP_NUM_THREADS=1 .venv-angle/bin/python -m bench.peers.angle_train \\
        --model /root/.cache/huggingface/hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/<rev> \\
        --train_jsonl /tmp/angle_nli.jsonl --output_dir /tmp/angle_out \\
        --learning_rate 5e-5 --batch_size 32 --max_steps 8 --warmup_steps 0 --seed 42

``--train_jsonl`` rows, one JSON object per line; the format is detected from the keys of the rows
(all rows must have the same format; other keys are ignored):

* format A: ``{"text1": str, "text2": str, "label": number}`` -> AnglE loss = cosine_w*CoSENT + ibn_w*in-batch
  negatives + angle_w*AnglE. For NLI, AnglE's own practice is entailment=1, contradiction=0, neutral dropped
  (see ``make_angle_nli_jsonl.py``). In the in-batch-negative term only pairs with ``int(label) != 0`` are
  anchors/positives, so labels must be 0/1 there (0.5 counts as 0 for it); CoSENT and AnglE only use
  the order of the labels within a batch.
* format B: ``{"query": str, "positive": str}`` -> contrastive loss with in-batch negatives (ibn_tau only).
* format C: ``{"query": str, "positive": str, "negative": str}`` -> (ibn_w*ibn + cln_w*hard-negative)/2
  + angle_w*AnglE + cosine_w*CoSENT on (q,pos)=1 / (q,neg)=0 pairs.
  (angle-emb < 0.6 called the triplet format "B" with a ``text`` column; 0.6.x renamed it.)

Every optimizer-schedule knob that HF ``TrainingArguments`` has and the peers should share
(steps, batch, lr, scheduler, warmup, weight decay, clipping, optimizer, seed) is a flag here; whatever is
not a flag keeps AnglE's/HF's default. The result in ``--output_dir`` is the bare backbone written by
``AnglE.fit`` (``backbone.save_pretrained`` + tokenizer), loadable with ``transformers.AutoModel``;
no pooling head is saved, pool it yourself (mean / cls); with ``--dev_file`` the best-dev weights go to
``OUTPUT_DIR/best`` and the dev scores to ``dev_record.json``. ``angle_train_meta.json`` records arguments,
optimizer-step count, loss log and timing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# Offline and quiet before anything imports huggingface_hub / transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("WANDB_MODE", "disabled")

FORMAT_KEYS = {"A": ("text1", "text2", "label"), "C": ("query", "positive", "negative"), "B": ("query", "positive")}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="local path of the start model (HF folder)")
    p.add_argument("--train_jsonl", required=True, help="training rows, format A, B or C (see module doc)")
    p.add_argument("--output_dir", required=True)
    # schedule shared by all contenders
    p.add_argument("--learning_rate", type=float, default=5e-5, help="AnglE BERT-NLI recipe: 5e-5")
    p.add_argument("--batch_size", type=int, default=32, help="per-step batch of PAIRS/TRIPLETS (recipe: 128)")
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--epochs", type=float, default=None, help="default 1 when --max_steps is not given")
    group.add_argument("--max_steps", type=int, default=None, help="optimizer steps; overrides epochs")
    p.add_argument("--warmup_steps", type=float, default=0,
                   help="linear warmup: >=1 steps, in (0,1) a ratio of total steps (HF semantics). "
                        "AnglE.fit's own default is 1000; the NLI recipe uses 50")
    p.add_argument("--lr_scheduler_type", default="linear", help="HF scheduler name (AnglE uses HF default: linear)")
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--optim", default=None, help="HF optimizer name; default: HF's (adamw_torch_fused on torch>=2.8)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data_seed", type=int, default=None, help="sampler seed; default = --seed (HF semantics)")
    # model / loss
    p.add_argument("--max_length", type=int, default=128, help="tokenizer truncation (recipe: 128)")
    p.add_argument("--pooling_strategy", default="cls",
                   help="pooling used in the loss: cls, cls_avg, cls_max, avg/mean, max, last (recipe: cls)")
    p.add_argument("--cosine_w", type=float, default=0.0, help="recipe: 0.0")
    p.add_argument("--ibn_w", type=float, default=30.0, help="recipe: 30.0")
    p.add_argument("--angle_w", type=float, default=1.0, help="recipe: 1.0")
    p.add_argument("--cln_w", type=float, default=1.0, help="hard-negative weight, format C only")
    p.add_argument("--cosine_tau", type=float, default=20.0)
    p.add_argument("--ibn_tau", type=float, default=20.0)
    p.add_argument("--angle_tau", type=float, default=20.0)
    p.add_argument("--filter_duplicate", type=int, choices=[0, 1], default=0,
                   help="drop a row whose text repeats within its batch (angle_trainer CLI default 0; fit() default 1)")
    p.add_argument("--text_prompt", default=None, help="format A prompt, e.g. 'query: {text}'")
    p.add_argument("--query_prompt", default=None)
    p.add_argument("--doc_prompt", default=None)
    p.add_argument("--apply_ese", type=int, choices=[0, 1], default=0, help="AnglE's own Espresso (ESE) trainer")
    p.add_argument("--ese_compression_size", type=int, default=128)
    p.add_argument("--ese_kl_temperature", type=float, default=1.0)
    # runtime
    p.add_argument("--device", choices=["cpu", "auto"], default="cpu", help="cpu forces CPU even if a GPU exists")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS or torch's)")
    p.add_argument("--fp16", type=int, choices=[0, 1], default=0, help="recipe uses fp16=1 (GPU only)")
    p.add_argument("--bf16", type=int, choices=[0, 1], default=0)
    p.add_argument("--logging_steps", type=int, default=1)
    # selection on STS-B dev, inside the trainer (bench.peers.dev_callback): the best weights go to OUTPUT_DIR/best
    p.add_argument("--dev_file", help="STS-B dev, scored by our evaluator every --eval_every optimizer steps")
    p.add_argument("--eval_every", type=int, default=0)
    p.add_argument("--half_step", type=int, default=0, help="successive halving: the step of the cut")
    p.add_argument("--keep_at_least", type=float, help="successive halving: stop at --half_step below this")
    p.add_argument("--max_rows", type=int, default=None, help="use only the first N rows of the jsonl")
    args = p.parse_args(argv)
    if args.max_steps is None and args.epochs is None:
        args.epochs = 1.0
    return args


def read_rows(path: str, max_rows: int | None) -> tuple[list[dict], str]:
    rows, fmt = [], None
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            obj = json.loads(line)
            row_fmt = next((f for f, keys in FORMAT_KEYS.items() if all(k in obj for k in keys)), None)
            if row_fmt is None:
                raise SystemExit(f"{path}:{number}: keys {sorted(obj)} match no AnglE format {FORMAT_KEYS}")
            if fmt is None:
                fmt = row_fmt
            elif row_fmt != fmt:
                raise SystemExit(f"{path}:{number}: format {row_fmt}, earlier rows are format {fmt}")
            row = {k: obj[k] for k in FORMAT_KEYS[fmt]}
            if fmt == "A":
                row["label"] = float(row["label"])
            rows.append(row)
            if max_rows is not None and len(rows) >= max_rows:
                break
    if not rows:
        raise SystemExit(f"{path}: no rows")
    return rows, fmt


def dev_scoring(args: argparse.Namespace, angle) -> tuple:
    """STS-B dev on AnglE's backbone with mean pooling (AnglE's ``avg``), inside its trainer: our evaluator's padded
    path (``padded_mean_dev_score``; this environment's transformers cannot import our package). Returns the
    callback and the eager backbone it scores (``fit()`` trains a ``torch.compile`` wrapper of it, same parameters)."""
    from bench.peers.dev_callback import DevScoring, HalvingCut, padded_mean_dev_score
    from ese_trainer.data.sts import load_sts_pairs

    if args.pooling_strategy not in ("avg", "mean"):
        raise SystemExit(f"--dev_file scores mean-pooled embeddings; --pooling_strategy {args.pooling_strategy} "
                         "would select on another embedding than the one trained")
    dev = load_sts_pairs(args.dev_file, name="dev")
    backbone = angle.backbone

    def score() -> float:
        return padded_mean_dev_score(backbone, angle.tokenizer, dev.sentences1, dev.sentences2, dev.scores,
                                     args.max_length)

    return DevScoring(score, backbone.state_dict, args.eval_every, HalvingCut(args.half_step, args.keep_at_least),
                      record=os.path.join(args.output_dir, "dev_record.json")), backbone


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported

    from importlib.metadata import version

    import angle_emb
    import torch
    import transformers
    from angle_emb import AnglE
    from angle_emb.angle import AngleTrainer  # AngleESETrainer subclasses it
    from datasets import Dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.set_seed(args.seed)

    rows, fmt = read_rows(args.train_jsonl, args.max_rows)
    train_ds = Dataset.from_list(rows)  # no pre-shuffle: HF Trainer's RandomSampler shuffles with the seed
    label_info = {}
    if fmt == "A":
        labels = [r["label"] for r in rows]
        label_info = {"distinct_labels": sorted(set(labels))[:20],
                      "ibn_positive_pairs": sum(int(x) != 0 for x in labels)}
    print(f"[angle_train] {len(rows)} rows, AnglE format {fmt} {label_info}", flush=True)

    angle = AnglE.from_pretrained(
        args.model,
        max_length=args.max_length,
        pooling_strategy=args.pooling_strategy,
        train_mode=True,
        device="cpu" if args.device == "cpu" else None,
    )

    # Observe (not alter) AnglE's trainer: count optimizer steps and keep its state after train().
    seen: dict = {}

    class _StepCounter(transformers.TrainerCallback):
        def __init__(self):
            self.steps = 0

        def on_step_end(self, targs, state, control, **kwargs):  # called once per optimizer step
            self.steps += 1

    counter = _StepCounter()
    original_train = AngleTrainer.train

    scoring, backbone = dev_scoring(args, angle) if args.dev_file else (None, None)

    def observed_train(self, *a, **k):
        self.add_callback(counter)
        if scoring:
            self.add_callback(scoring)
        start = time.perf_counter()
        output = original_train(self, *a, **k)
        seen.update(state=self.state, args=self.args, output=output, seconds=time.perf_counter() - start,
                    trainer_class=type(self).__name__, optimizer=type(self.optimizer).__name__,
                    lr_scheduler=type(self.lr_scheduler).__name__)
        return output

    AngleTrainer.train = observed_train

    argument_kwargs = {
        "seed": args.seed,
        "lr_scheduler_type": args.lr_scheduler_type,
        "weight_decay": args.weight_decay,
        "max_grad_norm": args.max_grad_norm,
        "report_to": "none",
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "use_cpu": args.device == "cpu",
        "save_only_model": True,
    }
    if args.data_seed is not None:
        argument_kwargs["data_seed"] = args.data_seed
    if args.max_steps is not None:
        argument_kwargs["max_steps"] = args.max_steps
    if args.optim:
        argument_kwargs["optim"] = args.optim
    trainer_kwargs = None
    if args.apply_ese:
        trainer_kwargs = {"ese_kl_temperature": args.ese_kl_temperature,
                          "ese_compression_size": args.ese_compression_size}

    wall = time.perf_counter()
    angle.fit(
        train_ds=train_ds,
        output_dir=args.output_dir,
        batch_size=args.batch_size,
        epochs=args.epochs if args.epochs is not None else 1,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        logging_steps=args.logging_steps,
        save_strategy="no",  # fit() itself writes the final backbone + tokenizer to output_dir
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        fp16=bool(args.fp16),
        bf16=bool(args.bf16),
        argument_kwargs=argument_kwargs,
        trainer_kwargs=trainer_kwargs,
        loss_kwargs={
            "cosine_w": args.cosine_w, "ibn_w": args.ibn_w, "cln_w": args.cln_w, "angle_w": args.angle_w,
            "cosine_tau": args.cosine_tau, "ibn_tau": args.ibn_tau, "angle_tau": args.angle_tau,
        },
        apply_ese=bool(args.apply_ese),
        filter_duplicate=bool(args.filter_duplicate),
        text_prompt=args.text_prompt,
        query_prompt=args.query_prompt,
        doc_prompt=args.doc_prompt,
    )
    wall = time.perf_counter() - wall
    if scoring:
        backbone.load_state_dict(scoring.best_weights)
        backbone.save_pretrained(os.path.join(args.output_dir, "best"))
        angle.tokenizer.save_pretrained(os.path.join(args.output_dir, "best"))

    state, targs = seen["state"], seen["args"]
    if counter.steps != state.global_step:
        raise SystemExit(f"step count mismatch: callback {counter.steps} vs trainer {state.global_step}")
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    meta = {
        "peer": "angle-emb",
        "versions": {"angle_emb": angle_emb.__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__, "peft": version("peft"), "bitsandbytes": version("bitsandbytes")},
        "args": vars(args),
        "dataset_format": fmt,
        "rows": len(rows),
        **label_info,
        "trainer_class": seen["trainer_class"],
        "optimizer": seen["optimizer"],
        "lr_scheduler": seen["lr_scheduler"],
        "optimizer_steps": state.global_step,
        "max_steps_planned": state.max_steps,
        "epochs_done": state.epoch,
        "effective_batch_pairs": targs.per_device_train_batch_size * targs.gradient_accumulation_steps,
        "warmup_steps_resolved": targs.get_warmup_steps(state.max_steps),
        "optim_name": str(targs.optim),
        "fp16": targs.fp16, "bf16": targs.bf16,
        "device": str(targs.device),
        "torch_threads": torch.get_num_threads(),
        "train_seconds": round(seen["seconds"], 2),
        "fit_seconds": round(wall, 2),
        "loss_log": losses,
        "log_history": state.log_history,
    }
    with open(os.path.join(args.output_dir, "angle_train_meta.json"), "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=2, default=str)
    print(f"[angle_train] optimizer_steps={state.global_step} (planned {state.max_steps}), "
          f"epochs={state.epoch:.3f}, train {seen['seconds']:.1f}s, fit {wall:.1f}s, "
          f"first/last loss {losses[0] if losses else None}/{losses[-1] if losses else None}", flush=True)
    print(f"[angle_train] saved to {args.output_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
