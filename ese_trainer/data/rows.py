"""Grouped rows, the training layout: an anchor with its positive, its hard negatives and its scored texts.

A row is ``(anchor, texts, scores, roles)``: every other text of the row with its gold score against the anchor
(in [0, 1], NaN when there is none, e.g. a mined negative) and its role:

- ``POSITIVE`` (at most one per row): the in-batch term's target for this anchor;
- ``NEGATIVE``: a hard negative, a candidate in every anchor's softmax;
- ``SCORED``: in neither, a pair for the ranking terms only (an NLI neutral hypothesis).

Every text with a score enters the ranking terms (CoSENT, AnglE) as the pair ``(anchor, text, score)``. Roles come
from scores: at least ``positive_min_score`` is a positive, at most ``negative_max_score`` a negative (the label
map decides what an NLI label scores, so raw class ids invert the roles as they invert the ranking).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

POSITIVE, NEGATIVE, SCORED = 0, 1, 2
ROW_COLUMNS = ("anchor", "texts", "scores", "roles")  # a row's fields, the columns of a rows dataset


@dataclass(frozen=True)
class RoleThresholds:
    """Scores from which a text is a row's positive (``>= positive_min_score``) or a hard negative
    (``<= negative_max_score``); in between it is scored only. 1.0 / 0.0 with the default label map: entailment
    positive, contradiction negative, neutral scored; ``negative_max_score: 0.5`` puts neutral in the softmax."""

    positive_min_score: float = 1.0
    negative_max_score: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.negative_max_score < self.positive_min_score <= 1.0:
            raise ValueError(f"need 0 <= negative_max_score < positive_min_score <= 1, got negative_max_score="
                             f"{self.negative_max_score}, positive_min_score={self.positive_min_score}")

    def role(self, score: float) -> int:
        if score >= self.positive_min_score:
            return POSITIVE
        return NEGATIVE if score <= self.negative_max_score else SCORED


DEFAULT_THRESHOLDS = RoleThresholds()


@dataclass
class RowCounts:
    """What a source's rows hold: rows, rows with a positive, hard negatives, scored-only texts, ranking pairs."""

    rows: int = 0
    rows_with_positive: int = 0
    rows_with_negative: int = 0
    negatives: int = 0
    scored_only: int = 0
    ranking_pairs: int = 0

    def add(self, roles: list[int], scores: list[float]) -> None:
        self.rows += 1
        self.rows_with_positive += POSITIVE in roles
        self.rows_with_negative += NEGATIVE in roles
        self.negatives += roles.count(NEGATIVE)
        self.scored_only += roles.count(SCORED)
        self.ranking_pairs += sum(1 for score in scores if not math.isnan(score))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Rows:
    """Rows as columns (:data:`ROW_COLUMNS`), and their counts."""

    anchor: list[str] = field(default_factory=list)
    texts: list[list[str]] = field(default_factory=list)
    scores: list[list[float]] = field(default_factory=list)
    roles: list[list[int]] = field(default_factory=list)
    counts: RowCounts = field(default_factory=RowCounts)

    def add(self, anchor: str, texts: list[str], scores: list[float], roles: list[int]) -> None:
        self.anchor.append(anchor)
        self.texts.append(texts)
        self.scores.append(scores)
        self.roles.append(roles)
        self.counts.add(roles, scores)

    def columns(self) -> dict[str, list]:
        """``{column: values}`` for every column of :data:`ROW_COLUMNS`."""
        return {name: getattr(self, name) for name in ROW_COLUMNS}

    def __len__(self) -> int:
        return len(self.anchor)

    def group(self, anchor: str, scored: list[tuple[str, float]], thresholds: RoleThresholds) -> None:
        """The rows of one anchor's scored texts (an NLI premise's hypotheses): one row per positive, the negatives and
        scored-only texts dealt round-robin over those rows (each text in exactly one row, so every pair is seen once
        per pass); an anchor without a positive makes one row of candidates and ranking pairs."""
        by_role: dict[int, list[tuple[str, float]]] = {POSITIVE: [], NEGATIVE: [], SCORED: []}
        for text, score in scored:
            by_role[thresholds.role(score)].append((text, score))
        positives = by_role[POSITIVE]
        count = max(1, len(positives))
        members: list[list[tuple[str, float, int]]] = [[] for _ in range(count)]
        for index, (text, score) in enumerate(positives):
            members[index].append((text, score, POSITIVE))
        for role in (NEGATIVE, SCORED):
            for index, (text, score) in enumerate(by_role[role]):
                members[index % count].append((text, score, role))
        for member in members:
            self.add(anchor, [text for text, _, _ in member], [score for _, score, _ in member],
                     [role for _, _, role in member])

    def with_positives_as_anchors(self, rescore: bool = True) -> Rows:
        """These rows, then each row with a positive again anchored on that positive: ``(positive, [anchor, hard
        negatives])``, the old anchor its positive at the pair's score (``rescore``; else unscored, so the pair enters
        the ranking terms once, from its first row) and the hard negatives unscored (NaN: no gold score against the
        positive, so in its softmax only). Sentence-transformers' NLI triplets take both anchors the same way:
        (premise, entailment, contradiction) and (entailment, premise, contradiction)."""
        both = Rows()
        for anchor, texts, scores, roles in zip(self.anchor, self.texts, self.scores, self.roles):
            both.add(anchor, texts, scores, roles)
        for anchor, texts, scores, roles in zip(self.anchor, self.texts, self.scores, self.roles):
            if POSITIVE not in roles:
                continue
            positive = roles.index(POSITIVE)
            negatives = [text for text, role in zip(texts, roles) if role == NEGATIVE]
            both.add(texts[positive], [anchor, *negatives],
                     [scores[positive] if rescore else math.nan] + [math.nan] * len(negatives),
                     [POSITIVE] + [NEGATIVE] * len(negatives))
        return both
