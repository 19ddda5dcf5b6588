"""STS-B dev inside every contender's own trainer, and successive halving's cut over learning rates.

Every contender (ours, sentence-transformers', AnglE's) is scored on STS-B dev by our evaluator at the same evenly
spaced steps while it trains, so a run's wall clock covers the same work for all and no checkpoint is saved and
reloaded for selection. The best-scoring weights are kept in memory and written once at the end.

Successive halving (Jamieson & Talwalkar 2016, one round): every learning-rate candidate runs with its full-length
schedule; at half the pass a candidate whose best dev so far is below the second best of the candidates already
at that point stops there. Its record says where it stopped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

DEV_METRIC = "sts_dev_spearman"  # what our recipe's Trainer logs (as eval_<metric>) for STS-B dev


def padded_mean_dev_score(model, tokenizer, sentences1: list[str], sentences2: list[str], gold: list[float],
                          max_seq_length: int = 128, batch_size: int = 64) -> float:
    """Cosine Spearman x100 of mean-pooled (SBERT) embeddings, padded batches: what our evaluator computes
    (``ese_trainer.evaluation.sts.evaluate_sts(..., "mean", packed=False)``; tested equal), written with torch and
    scipy alone for a trainer whose environment cannot import our package (AnglE's pins an older transformers)."""
    import torch
    from scipy.stats import spearmanr

    unique = list(dict.fromkeys(sentences1 + sentences2))
    vectors = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(unique), batch_size):
                texts = unique[start:start + batch_size]
                batch = tokenizer(texts, truncation=True, max_length=max_seq_length, padding=True,
                                  return_tensors="pt").to(next(model.parameters()).device)
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].to(hidden.dtype).unsqueeze(-1)
                pooled = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).float().cpu()
                vectors.update(zip(texts, pooled))
    finally:
        model.train(was_training)
    first = torch.stack([vectors[text] for text in sentences1])
    second = torch.stack([vectors[text] for text in sentences2])
    cosines = torch.nn.functional.cosine_similarity(first, second, dim=-1).tolist()
    return float(spearmanr(cosines, gold).statistic) * 100


class HalvingCut:
    """Stop at the first dev score at or after ``half_step`` when the best so far is below ``keep_at_least``
    (None: never stop, the first two candidates of a grid)."""

    def __init__(self, half_step: int, keep_at_least: float | None) -> None:
        self.half_step, self.keep_at_least = half_step, keep_at_least
        self.best, self.decided, self.stopped_at = -math.inf, False, None

    def stop_after(self, step: int, dev: float) -> bool:
        self.best = max(self.best, dev)
        if self.decided or step < self.half_step:
            return False
        self.decided = True
        if self.keep_at_least is not None and self.best < self.keep_at_least:
            self.stopped_at = step
        return self.stopped_at is not None


class RecipeHalving(TrainerCallback):
    """Our recipe scores dev itself (``eval_strategy: steps``); this reads the score the run selects by
    (``metric``: its ``metric_for_best_model``, e.g. an ESE run's ``sts_dev_slices_spearman``) and applies the cut."""

    def __init__(self, cut: HalvingCut, record: Path, metric: str = DEV_METRIC) -> None:
        self.cut, self.record, self.key = cut, record, f"eval_{metric.removeprefix('eval_')}"

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and self.key in metrics and self.cut.stop_after(state.global_step, metrics[self.key]):
            control.should_training_stop = True
            self.record.write_text(json.dumps({"stopped_at": self.cut.stopped_at}) + "\n")
        return control


class DevScoring(TrainerCallback):
    """For a peer's trainer: score dev every ``every`` optimizer steps and at the last, keep the best weights,
    apply the halving cut; ``dev_by_step`` and ``stopped_at`` go to ``record`` (JSON) at the end."""

    def __init__(self, score: Callable[[], float], weights: Callable[[], dict], every: int, cut: HalvingCut,
                 record: Path | str) -> None:
        self.score, self.weights, self.every, self.cut, self.record = score, weights, every, cut, Path(record)
        self.dev_by_step: dict[int, float] = {}
        self.best_weights: dict | None = None

    def _score(self, step: int, control) -> None:
        if step in self.dev_by_step:
            return
        dev = self.score()
        if not self.dev_by_step or dev > max(self.dev_by_step.values()):
            self.best_weights = {name: tensor.detach().clone() for name, tensor in self.weights().items()}
        self.dev_by_step[step] = dev
        if self.cut.stop_after(step, dev):
            control.should_training_stop = True

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._score(state.global_step, control)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._score(state.global_step, control)
        self.record.write_text(json.dumps({"dev_by_step": self.dev_by_step, "stopped_at": self.cut.stopped_at,
                                           "steps": state.global_step, "max_steps": state.max_steps}, indent=2) + "\n")
        return control
