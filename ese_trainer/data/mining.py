"""Hard negatives mined for rows that have a positive but no negative of their own, with sentence-transformers'
``mine_hard_negatives`` and a frozen model (the start model)."""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from datasets import Dataset

from ese_trainer.data.rows import NEGATIVE, POSITIVE, Rows

NEGATIVE_SAMPLING_STRATEGIES = ("top", "random")  # how mine_hard_negatives picks among the candidates left


@dataclass(frozen=True)
class MiningSettings:
    """``mine_hard_negatives``' settings: ``num_negatives`` per row, taken from the candidates ranked
    ``range_min``..``range_max`` by the model's cosine to the anchor (the closest ones can be unlabelled positives),
    skipping those within ``absolute_margin`` (or ``relative_margin`` of its magnitude) of the positive's score or
    above ``max_score``; ``top`` takes the closest remaining, ``random`` samples among them.

    ``relative_margin: 0.05`` with ``top`` is NV-Retriever's best setting (Moreira et al., arXiv 2407.15831).
    """

    num_negatives: int = 1
    range_min: int = 0
    range_max: int | None = 50
    absolute_margin: float | None = None
    relative_margin: float | None = 0.05
    max_score: float | None = None
    sampling_strategy: str = "top"

    def __post_init__(self) -> None:
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {self.num_negatives}")
        if self.range_min < 0 or (self.range_max is not None and self.range_max < self.range_min + self.num_negatives):
            raise ValueError(f"need 0 <= range_min and range_max >= range_min + num_negatives, got range_min="
                             f"{self.range_min}, range_max={self.range_max}, num_negatives={self.num_negatives}")
        if self.sampling_strategy not in NEGATIVE_SAMPLING_STRATEGIES:
            raise ValueError(f"sampling_strategy must be one of {NEGATIVE_SAMPLING_STRATEGIES}, "
                             f"got {self.sampling_strategy!r}")


def mine_row_negatives(rows: Rows, settings: MiningSettings, model_path: str, source_name: str,
                       cache_folder: str | Path | None = None) -> tuple[Rows, dict]:
    """``rows`` with mined hard negatives (no gold score: they join the softmax, not the ranking terms) added to
    every row that has a positive and no negative; the candidates are every text of the source. Returns the new rows
    and what was mined (rows asked for, rows given k negatives, fewer, none)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    wanted = [index for index, roles in enumerate(rows.roles) if POSITIVE in roles and NEGATIVE not in roles]
    report = {**asdict(settings), "model": model_path, "rows_asked": len(wanted), "rows_full": 0, "rows_partial": 0,
              "rows_none": 0, "negatives": 0}
    if not wanted:
        return rows, report
    positive_of = {index: rows.texts[index][rows.roles[index].index(POSITIVE)] for index in wanted}
    pairs = Dataset.from_dict({"anchor": [rows.anchor[index] for index in wanted],
                               "positive": [positive_of[index] for index in wanted]})
    corpus = sorted({text for texts in rows.texts for text in texts} | set(rows.anchor))
    model = SentenceTransformer(model_path, device="cpu")
    with contextlib.redirect_stdout(io.StringIO()):  # its statistics table; the counts go to data_counts.json
        mined = mine_hard_negatives(
            pairs, model, anchor_column_name="anchor", positive_column_name="positive", corpus=corpus,
            range_min=settings.range_min, range_max=settings.range_max, absolute_margin=settings.absolute_margin,
            relative_margin=settings.relative_margin, max_score=settings.max_score,
            num_negatives=settings.num_negatives, sampling_strategy=settings.sampling_strategy,
            output_format="labeled-list", batch_size=64, verbose=True,
            cache_folder=None if cache_folder is None else str(cache_folder))
    found: dict[tuple[str, str], list[str]] = {}
    for anchor, documents, labels in zip(mined["anchor"], mined["positive"], mined["labels"]):
        found[(anchor, documents[0])] = [text for text, label in zip(documents, labels) if label == 0]
    result = Rows()
    for index in range(len(rows)):
        texts, scores, roles = list(rows.texts[index]), list(rows.scores[index]), list(rows.roles[index])
        if index in positive_of:
            own = {rows.anchor[index], *texts}
            negatives = [text for text in found.get((rows.anchor[index], positive_of[index]), []) if text not in own]
            texts += negatives
            scores += [math.nan] * len(negatives)
            roles += [NEGATIVE] * len(negatives)
            report["negatives"] += len(negatives)
            key = "rows_full" if len(negatives) >= settings.num_negatives else "rows_partial" if negatives else \
                "rows_none"
            report[key] += 1
        result.add(rows.anchor[index], texts, scores, roles)
    return result, report
