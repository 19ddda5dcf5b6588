"""Resuming gives the same model: N steps straight equal N/2 steps, a checkpoint, and a resumed run to N (dense, MoE,
ESE with its cached PCA projections), on the recipe's own batches and with dropout on; a checkpoint broken by a
crash mid-save is skipped for the previous one, or refused by name, never a traceback or a silent restart."""

import json
import shutil

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

from ese_trainer.config.parsing import ConfigError
from ese_trainer.data.batching import SourceBatchSampler
from ese_trainer.data.collator import RowCollator, row_text_ids
from ese_trainer.ese.arguments import ESEArguments
from ese_trainer.losses.arguments import LossArguments
from ese_trainer.modeling.encoding import SentenceEncoder
from ese_trainer.training.build import build_objective
from ese_trainer.training.run_arguments import resolve_resume_checkpoint
from ese_trainer.training.trainer import ESETrainer

from .conftest import build_tiny_bert, build_tiny_moe, snli_rows

STEPS = 4


@pytest.fixture(scope="module")
def rows():
    return snli_rows(64, seed=7)


def train(kind: str, rows, tokenizer, output_dir, resume=None, ese=None) -> ESETrainer:
    """The recipe's trainer (row batches from SourceBatchSampler, packed forward, AdamW, dropout 0.1) on a tiny
    model for ``STEPS`` steps, a checkpoint every 2."""
    model = (build_tiny_moe if kind == "moe" else build_tiny_bert)(len(tokenizer), seed=0, dropout=0.1)
    args = TrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=8, max_steps=STEPS,
                             learning_rate=1e-3, warmup_steps=1, logging_steps=1, save_strategy="steps", save_steps=2,
                             report_to="none", remove_unused_columns=False, use_cpu=True, seed=0,
                             dataloader_pin_memory=False, disable_tqdm=True)
    ese_args = ESEArguments() if ese is None else ESEArguments(ese_enabled=True, **ese)
    torch.manual_seed(0)
    objective = build_objective(LossArguments(), ese_args, model.config)
    sampler = SourceBatchSampler([0] * len(rows), [row_text_ids(row) for row in rows], 8, [1.0], seed=0)
    trainer = ESETrainer(SentenceEncoder(model, "mean", packed=True), objective, args=args, train_dataset=rows,
                         data_collator=RowCollator(tokenizer, 64), processing_class=tokenizer,
                         train_batch_sampler=sampler)
    trainer.add_callback(counter := StepCounter())
    trainer.train(resume_from_checkpoint=resume)
    trainer.steps_run = counter.steps
    return trainer


class StepCounter(TrainerCallback):
    """How many optimizer steps this process ran (a resumed run's log history also holds the restored ones)."""

    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def losses(trainer: ESETrainer) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}


@pytest.mark.parametrize("kind,ese", [
    ("dense", None),
    ("moe", None),
    ("dense", {"ese_compression_size": 8, "ese_pca_refresh_steps": 4}),  # step 3 reuses step 1's projection
])
def test_half_then_resume_equals_straight(kind, ese, rows, tokenizer, tmp_path):
    straight = train(kind, rows, tokenizer, tmp_path / "straight", ese=ese)
    resumed = train(kind, rows, tokenizer, tmp_path / "resumed", resume=str(tmp_path / "straight" / "checkpoint-2"),
                    ese=ese)
    assert resumed.steps_run == 2 and sorted(losses(resumed)) == [1, 2, 3, 4]  # steps 1-2 restored, not re-run
    for step in (3, 4):
        assert losses(resumed)[step] == pytest.approx(losses(straight)[step], rel=1e-5, abs=1e-6)
    expected = dict(straight.model.named_parameters())
    for name, parameter in resumed.model.named_parameters():
        torch.testing.assert_close(parameter, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    if ese:
        ese_loss = resumed.model.objective.ese_loss
        assert int(ese_loss.forwards) == STEPS and bool(ese_loss.pca_ready_1)
        assert torch.equal(ese_loss.pca_projection_1, straight.model.objective.ese_loss.pca_projection_1)


def test_a_checkpoint_broken_mid_save_is_skipped_or_refused_by_name(rows, tokenizer, tmp_path):
    train("dense", rows, tokenizer, tmp_path / "run")
    newest = tmp_path / "run" / "checkpoint-4"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a crash mid-save
    assert resolve_resume_checkpoint("last", str(tmp_path / "run")) == str(tmp_path / "run" / "checkpoint-2")
    with pytest.raises(ConfigError, match=r"checkpoint-4 cannot be resumed from: model.safetensors is unreadable"):
        resolve_resume_checkpoint(str(newest), str(tmp_path / "run"))
    older = tmp_path / "run" / "checkpoint-2"
    (older / "trainer_state.json").write_text("{")
    with pytest.raises(ConfigError, match=r"no checkpoint in .* can be read: .*checkpoint-4 .*checkpoint-2 "
                                          r"\(trainer_state.json is unreadable"):
        resolve_resume_checkpoint("last", str(tmp_path / "run"))
    shutil.rmtree(older)
    (newest / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="checkpoint-4 .no model weights"):
        resolve_resume_checkpoint("last", str(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
