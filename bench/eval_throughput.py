"""STS evaluation throughput: our evaluator vs. ``SentenceTransformer.encode`` + ``EmbeddingSimilarityEvaluator``.

    python -m bench.eval_throughput [--sts_data_dir data] [--tasks ...] [--repeats 2]

Both score all-MiniLM-L6-v2 (the same ST folder) on the same STS tasks, alternating ``repeats`` times; ours with
its padding-free forward (the default) and with padded length-sorted batches;
sentences/second counts every text of every pair (duplicates included, as both read them), and the scores
must agree to 1e-4 (in [0, 1] units). Results: ``bench/results/eval_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from bench.machine import describe_machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
BATCH_SIZE = 128


def main() -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
    from transformers import AutoModel, AutoTokenizer

    from ese_trainer.data import STS_TASKS, load_sts_task
    from ese_trainer.evaluation.sts import evaluate_sts
    from ese_trainer.hub_models import resolve_model_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sts_data_dir", default="data")
    parser.add_argument("--tasks", nargs="+", default=list(STS_TASKS))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    path = resolve_model_path(MODEL_ID)
    tasks = {task: load_sts_task(task, args.sts_data_dir) for task in args.tasks}
    sentences = sum(2 * len(pairs) for pairs in tasks.values())
    tokenizer, encoder = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    st_model = SentenceTransformer(path, device="cpu")

    def ours(packed: bool) -> dict[str, float]:
        scores = evaluate_sts(encoder, tokenizer, tasks, "mean", 128, BATCH_SIZE, show_progress=False, packed=packed)
        return {task: scores[task] / 100 for task in tasks}

    def theirs() -> dict[str, float]:
        results = {}
        for task, pairs in tasks.items():
            evaluator = EmbeddingSimilarityEvaluator(pairs.sentences1, pairs.sentences2, pairs.scores, name=task,
                                                     similarity_fn_names=["cosine"], batch_size=BATCH_SIZE)
            results[task] = evaluator(st_model)[f"{task}_spearman_cosine"]
        return results

    contenders = {"ours": lambda: ours(True), "ours, padded": lambda: ours(False), "sentence-transformers": theirs}
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    scores: dict[str, dict[str, float]] = {}
    for repeat in range(args.repeats):
        for name, evaluate in contenders.items():
            started = time.perf_counter()
            scores[name] = evaluate()
            seconds[name].append(time.perf_counter() - started)
            print(f"repeat {repeat + 1}: {name} {seconds[name][-1]:.1f} s", flush=True)
    per_second = {name: sentences / statistics.median(times) for name, times in seconds.items()}
    largest_gap = max(abs(scores[name][task] - scores["sentence-transformers"][task])
                      for name in ("ours", "ours, padded") for task in tasks)
    ratio = per_second["ours"] / per_second["sentence-transformers"]
    data_dir = os.path.relpath(args.sts_data_dir, REPO)
    command = (f"python -m bench.eval_throughput --sts_data_dir {data_dir} --tasks {' '.join(args.tasks)} "
               f"--repeats {args.repeats}")
    machine = describe_machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "eval_throughput.json").write_text(json.dumps({
        "command": command, "machine": machine, "model": MODEL_ID, "sentences": sentences, "seconds": seconds,
        "sentences_per_second": per_second, "ratio_ours_over_st": ratio, "scores": scores,
        "largest_score_gap": largest_gap, "scores_agree_to_1e-4": largest_gap < 1e-4}, indent=2) + "\n")
    lines = ["| contender | sentences/s (median) | runs (s) |", "|---|---|---|"]
    lines += [f"| {name} | {per_second[name]:.0f} | {', '.join(f'{t:.1f}' for t in seconds[name])} |"
              for name in contenders]
    summary = "\n".join([
        "# STS evaluation throughput (all-MiniLM-L6-v2, CPU)", "", f"Command: `{command}`  ", f"Machine: {machine}",
        "", f"{len(tasks)} tasks, {sentences} sentences (both sides of every pair), batch {BATCH_SIZE}.", "", *lines,
        "", f"ours / sentence-transformers: **{ratio:.2f}x**; largest Spearman difference {largest_gap:.1e} "
        "(agreement within 1e-4: " + ("yes" if largest_gap < 1e-4 else "no") + ").", ""])
    (RESULTS / "eval_throughput.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
