"""Write NLI training rows as AnglE jsonl, read through the PROJECT's own NLI loader.

Run with the project's venv (it imports ``ese_trainer``), so AnglE and our trainer see the same rows:

    .venv/bin/python bench/peers/make_angle_nli_jsonl.py --source data/SNLI --split dev \\
        --max_samples 256 --seed 42 --out /tmp/angle_nli_a.jsonl

Format A (default): ``{"text1", "text2", "label"}`` with AnglE's own NLI labelling by default:
entailment 1, contradiction 0, neutral dropped (maintainer's practice, SeanLee97/AnglE issue #26, and
``examples/NLI/train_nli.py``). ``--label_map '{"entailment":1,"neutral":0.5,"contradiction":0}'``
reproduces our default map instead; note AnglE's in-batch-negative term only treats ``int(label) != 0``
as positive, so a 0.5 neutral is never an ibn positive (it only sits between 0 and 1 in the ranking terms).

Rows come from ``ese_trainer.data.nli.load_nli_pairs`` (same text normalisation, same seeded shuffle,
same ``max_samples`` cut as our trainer), in that order.

Format C (``--format C``): ``{"query", "positive", "negative"}`` triplets: premise, one entailed
hypothesis, one contradicting hypothesis of the same premise (first of each, file order), shuffled
with ``--seed`` and cut to ``--max_samples``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="SentEval SNLI folder, file or dataset id (as our loader takes)")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=["A", "C"], default="A")
    p.add_argument("--label_map", default='{"entailment": 1.0, "contradiction": 0.0}',
                   help="JSON map; labels left out are dropped (default: AnglE's NLI practice, neutral dropped)")
    p.add_argument("--max_samples", type=int, default=None)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)

    from ese_trainer.data.files import normalise_text
    from ese_trainer.data.nli import label_name, load_nli_pairs, read_nli_rows

    rows = []
    if args.format == "A":
        dataset, counts = load_nli_pairs(args.source, split=args.split, label_map=json.loads(args.label_map),
                                         max_samples=args.max_samples, seed=args.seed)
        for s1, s2, score in zip(dataset["sentence1"], dataset["sentence2"], dataset["score"]):
            rows.append({"text1": s1, "text2": s2, "label": float(score)})
        info = counts.to_dict()
    else:
        raw = read_nli_rows(args.source, args.split)
        by_premise: dict[str, dict[str, str]] = {}
        for premise, hypothesis, label in zip(raw["premise"], raw["hypothesis"], raw["label"]):
            name = label_name(label)
            premise, hypothesis = normalise_text(premise), normalise_text(hypothesis)
            if name in ("entailment", "contradiction") and premise and hypothesis:
                by_premise.setdefault(premise, {}).setdefault(name, hypothesis)
        for premise, hyps in by_premise.items():
            if "entailment" in hyps and "contradiction" in hyps:
                rows.append({"query": premise, "positive": hyps["entailment"], "negative": hyps["contradiction"]})
        random.Random(args.seed).shuffle(rows)
        if args.max_samples is not None:
            rows = rows[: args.max_samples]
        info = {"premises": len(by_premise)}

    with open(args.out, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    labels = Counter(r["label"] for r in rows) if args.format == "A" else {}
    print(f"wrote {len(rows)} format-{args.format} rows to {args.out}; labels {dict(labels)}; {info}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
