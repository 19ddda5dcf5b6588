"""STS evaluation throughput: our evaluator vs. ``SentenceTransformer.encode`` + ``EmbeddingSimilarityEvaluator``.

    python -m bench.eval_throughput [--sts_data_dir data] [--tasks ...] [--repeats 2]

Every contender scores all-MiniLM-L6-v2 (the same ST folder) on the same STS tasks, alternating ``repeats`` times:

- ours (the default: length-sorted batches, each packed only where its padding makes packing pay), ours with every
  batch packed, ours with every batch padded, and ours in bf16 (``--bf16`` / ``bf16_full_eval``: a bfloat16 copy of
  the model);
- sentence-transformers in float32 and with bfloat16 weights (``model_kwargs={"dtype": torch.bfloat16}``).

Sentences/second counts every text of every pair (duplicates included, as both read them). Ours encodes each
distinct sentence of the suite once (STS-B reuses STS12-16's sentences), sentence-transformers every sentence:
the speed-up splits into that de-duplication (all sentences over distinct ones, the same for every batch size and
machine) and the per-sentence gain (distinct sentences/s of ours over sentences/s of sentence-transformers), whose
product it is. The float32 scores must
agree with sentence-transformers' to 1e-4 (in [0, 1] units); the bf16 rows report their gap to the float32 scores,
task by task. A second table sweeps the padding share of batches (STS-B test, 128 texts a batch drawn from windows
of the length-sorted texts) and times padded against packed forwards in float32 and bf16: where packing starts to
pay, the thresholds :data:`ese_trainer.modeling.packing.EVAL_PACKING_MIN_PADDING` rest on.
Results: ``bench/results/eval_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

from bench.machine import describe_machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
BATCH_SIZE = 128
SWEEP_TASK = "STSBenchmark"
SWEEP_WINDOWS = (1, 2, 4, 8, None)  # batches drawn at random from windows of this many sorted batches (None: all)
FLOAT32 = ("ours", "ours, packed", "ours, padded", "sentence-transformers")


def padding_sweep(encoder, tokenizer, pairs, repeats: int) -> list[dict]:
    """Padded vs. packed forward time over the same batches, per padding share, in float32 and bf16."""
    import torch

    from ese_trainer.evaluation.sts import bf16_copy
    from ese_trainer.modeling.encoding import SentenceEncoder
    from ese_trainer.training.run_start import cpu_computes_bf16

    sentences = list(dict.fromkeys(pairs.sentences1 + pairs.sentences2))
    token_ids = tokenizer(sentences, truncation=True, max_length=128)
    order = sorted(range(len(sentences)), key=lambda i: len(token_ids["input_ids"][i]), reverse=True)
    models = {"fp32": encoder, **({"bf16": bf16_copy(encoder)} if cpu_computes_bf16() else {})}
    rows = []
    for window in SWEEP_WINDOWS:
        width = len(order) if window is None else window * BATCH_SIZE
        shuffle = random.Random(0)
        batches = []
        for start in range(0, len(order), width):
            texts = order[start:start + width]
            shuffle.shuffle(texts)
            batches += [texts[i:i + BATCH_SIZE] for i in range(0, len(texts), BATCH_SIZE)]
        features = [dict(tokenizer.pad([{key: values[i] for key, values in token_ids.items()} for i in batch],
                                       return_tensors="pt")) for batch in batches]
        real = sum(int(batch["attention_mask"].sum()) for batch in features)
        share = 1 - real / sum(batch["attention_mask"].numel() for batch in features)
        row = {"window_batches": window or "all", "padding_share": share}
        for dtype, model in models.items():
            best = {}
            for packed in (False, True):
                sentence_encoder = SentenceEncoder(model, "mean", forward_chunks=1, packed=packed)
                times = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    with torch.inference_mode():
                        for batch in features:
                            sentence_encoder(batch)
                    times.append(time.perf_counter() - started)
                best[packed] = min(times)
            row[f"{dtype}_padded_over_packed"] = best[False] / best[True]
        rows.append(row)
        print(f"padding {share:.2f}: padded/packed time " + ", ".join(
            f"{dtype} {row[f'{dtype}_padded_over_packed']:.2f}" for dtype in models), flush=True)
    return rows


def main() -> None:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
    from transformers import AutoModel, AutoTokenizer

    from ese_trainer.data import STS_TASKS, load_sts_task
    from ese_trainer.evaluation.sts import evaluate_sts
    from ese_trainer.hub_models import resolve_model_path
    from ese_trainer.modeling.packing import EVAL_PACKING_MIN_PADDING
    from ese_trainer.training.run_start import cpu_computes_bf16

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sts_data_dir", default="data")
    parser.add_argument("--tasks", nargs="+", default=list(STS_TASKS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output_dir", default=str(RESULTS), help="where the records go")
    args = parser.parse_args()

    path = resolve_model_path(MODEL_ID)
    tasks = {task: load_sts_task(task, args.sts_data_dir) for task in args.tasks}
    sentences = sum(2 * len(pairs) for pairs in tasks.values())
    distinct = len({sentence for pairs in tasks.values() for sentence in (*pairs.sentences1, *pairs.sentences2)})
    tokenizer, encoder = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    bf16 = cpu_computes_bf16()  # emulated bf16 is many times slower than fp32: its timings would mean nothing
    st_models = {"fp32": SentenceTransformer(path, device="cpu"),
                 **({"bf16": SentenceTransformer(path, device="cpu", model_kwargs={"dtype": torch.bfloat16})}
                    if bf16 else {})}

    def ours(packed: bool | None, bf16: bool = False) -> dict[str, float]:
        scores = evaluate_sts(encoder, tokenizer, tasks, "mean", 128, BATCH_SIZE, show_progress=False, packed=packed,
                              bf16=bf16)
        return {task: scores[task] / 100 for task in tasks}

    def theirs(dtype: str) -> dict[str, float]:
        results = {}
        for task, pairs in tasks.items():
            evaluator = EmbeddingSimilarityEvaluator(pairs.sentences1, pairs.sentences2, pairs.scores, name=task,
                                                     similarity_fn_names=["cosine"], batch_size=BATCH_SIZE)
            results[task] = evaluator(st_models[dtype])[f"{task}_spearman_cosine"]
        return results

    contenders = {"ours": lambda: ours(None), "ours, packed": lambda: ours(True), "ours, padded": lambda: ours(False),
                  "sentence-transformers": lambda: theirs("fp32")}
    if bf16:
        contenders |= {"ours, bf16": lambda: ours(None, bf16=True),
                       "sentence-transformers, bf16": lambda: theirs("bf16")}
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    scores: dict[str, dict[str, float]] = {}
    for repeat in range(args.repeats):
        for name, evaluate in contenders.items():
            started = time.perf_counter()
            scores[name] = evaluate()
            seconds[name].append(time.perf_counter() - started)
            print(f"repeat {repeat + 1}: {name} {seconds[name][-1]:.1f} s", flush=True)
    sweep = padding_sweep(encoder, tokenizer, tasks[SWEEP_TASK], args.repeats) if SWEEP_TASK in tasks else []

    per_second = {name: sentences / statistics.median(times) for name, times in seconds.items()}
    reference = scores["sentence-transformers"]
    gaps = {name: max(abs(scores[name][task] - reference[task]) for task in tasks) for name in contenders}
    largest_gap = max(gaps[name] for name in FLOAT32)
    ratios = {"ours / sentence-transformers": per_second["ours"] / per_second["sentence-transformers"],
              "ours, packed / ours, padded": per_second["ours, packed"] / per_second["ours, padded"],
              "ours / ours, padded": per_second["ours"] / per_second["ours, padded"]}
    if bf16:
        ratios |= {"ours, bf16 / sentence-transformers, bf16": per_second["ours, bf16"]
                   / per_second["sentence-transformers, bf16"],
                   "ours, bf16 / sentence-transformers (fp32)": per_second["ours, bf16"]
                   / per_second["sentence-transformers"]}
    deduplication = sentences / distinct
    per_sentence = {name: ratio / deduplication for name, ratio in ratios.items() if "sentence-transformers" in name}
    data_dir = os.path.relpath(args.sts_data_dir, REPO)
    command = (f"python -m bench.eval_throughput --sts_data_dir {data_dir} --tasks {' '.join(args.tasks)} "
               f"--repeats {args.repeats}")
    machine = describe_machine()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "eval_throughput.json").write_text(json.dumps({
        "command": command, "machine": machine, "model": MODEL_ID, "sentences": sentences,
        "distinct_sentences": distinct, "seconds": seconds, "sentences_per_second": per_second, "ratios": ratios,
        "deduplication_gain": deduplication, "per_sentence_gain": per_sentence, "scores": scores,
        "largest_gap_to_sentence_transformers": gaps, "largest_float32_score_gap": largest_gap,
        "float32_scores_agree_to_1e-4": largest_gap < 1e-4, "padding_sweep": sweep,
        "eval_packing_min_padding": {str(dtype).removeprefix("torch."): share
                                     for dtype, share in EVAL_PACKING_MIN_PADDING.items()}}, indent=2) + "\n")
    lines = ["| contender | sentences/s (median) | runs (s) | largest Spearman gap to sentence-transformers (fp32) |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {per_second[name]:.0f} | {', '.join(f'{t:.1f}' for t in seconds[name])} | "
              f"{gaps[name]:.1e} |" for name in contenders]
    ratio_lines = [f"- {name}: **{value:.2f}x**" + (
        f" = de-duplication {deduplication:.2f}x x per sentence {per_sentence[name]:.2f}x" if name in per_sentence
        else "") for name, value in ratios.items()]
    dtypes = ["fp32", "bf16"] if bf16 else ["fp32"]
    sweep_lines = ["| batches drawn from | padding share | " + " | ".join(f"padded / packed time, {dtype}"
                                                                         for dtype in dtypes) + " |",
                   "|---|---|" + "---|" * len(dtypes)]
    sweep_lines += [f"| {row['window_batches']} sorted batches | {row['padding_share']:.2f} | "
                    + " | ".join(f"{row[f'{dtype}_padded_over_packed']:.2f}" for dtype in dtypes) + " |"
                    for row in sweep]
    per_task = ["| task | " + " | ".join(contenders) + " |", "|---|" + "---|" * len(contenders)]
    per_task += [f"| {task} | " + " | ".join(f"{100 * scores[name][task]:.3f}" for name in contenders) + " |"
                 for task in tasks]
    thresholds = ", ".join(f"{str(dtype).removeprefix('torch.')} {share:.2f}"
                           for dtype, share in EVAL_PACKING_MIN_PADDING.items())
    summary = "\n".join([
        "# STS evaluation throughput (all-MiniLM-L6-v2, CPU)", "", f"Command: `{command}`  ", f"Machine: {machine}",
        "", f"{len(tasks)} tasks, {sentences} sentences (both sides of every pair), {distinct} distinct in the "
        f"suite (what ours encodes; de-duplication alone {deduplication:.2f}x), batch {BATCH_SIZE}.", "",
        *lines,
        "", *ratio_lines, "", f"Float32 contenders' largest Spearman difference {largest_gap:.1e} (agreement within "
        "1e-4: " + ("yes" if largest_gap < 1e-4 else "no") + ").", "",
        *([] if bf16 else ["No bf16 rows: this CPU has no native bf16 (AVX512-BF16 or AMX), and emulated bf16 "
                           "timings mean nothing.", ""]),
        "Cosine Spearman x100 per task:", "", *per_task, "",
        f"Packing by padding share ({SWEEP_TASK}; above 1: packed is faster). Ours packs a batch from a padding share "
        f"of {thresholds}:", "", *sweep_lines, ""])
    (output_dir / "eval_throughput.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
