"""Resuming gives the same model: N steps straight equal N/2 steps, a checkpoint, and a resumed run to N (dense, MoE,
ESE with its cached PCA projections), on the recipe's own batches and with dropout on; a checkpoint missing or
breaking any file the Trainer restores is skipped for the previous one, or refused by name, never a traceback or a
silent restart."""

import json
import logging
import re
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
from ese_trainer.training.resume import checkpoint_problem, find_resume_checkpoint
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
    ("dense", {"ese_schedule": "espresso", "ese_compression_size": 8, "ese_pca_refresh_steps": 4}),  # step 3 reuses
    # step 1's projection; Starbucks (the default) drawing 1 of its 3 slices a step, keyed by the forwards counted
    ("dense", {"ese_starbucks_ladder": "grid", "ese_starbucks_slices_per_step": 1}),
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
        assert int(ese_loss.forwards) == STEPS
    if ese and ese_loss.settings.schedule == "espresso":
        assert bool(ese_loss.pca_ready_1)
        assert torch.equal(ese_loss.pca_projection_1, straight.model.objective.ese_loss.pca_projection_1)


def test_a_checkpoint_broken_mid_save_is_skipped_or_refused_by_name(rows, tokenizer, tmp_path):
    train("dense", rows, tokenizer, tmp_path / "run")
    newest = tmp_path / "run" / "checkpoint-4"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a crash mid-save
    assert find_resume_checkpoint("last", str(tmp_path / "run")) == str(tmp_path / "run" / "checkpoint-2")
    with pytest.raises(ConfigError, match=r"checkpoint-4 cannot be resumed from: model.safetensors is unreadable"):
        find_resume_checkpoint(str(newest), str(tmp_path / "run"))
    older = tmp_path / "run" / "checkpoint-2"
    (older / "trainer_state.json").write_text("{")
    with pytest.raises(ConfigError, match=r"no checkpoint in .* can be resumed from: .*checkpoint-4 .*checkpoint-2 "
                                          r"\(trainer_state.json is unreadable"):
        find_resume_checkpoint("last", str(tmp_path / "run"))
    shutil.rmtree(older)
    (newest / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="checkpoint-4 .no model weights"):
        find_resume_checkpoint("last", str(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the archive's largest member: its CRC no longer matches
    path.write_bytes(bytes(data))


BREAKS = {
    "missing": lambda path: path.unlink(),
    "garbage": lambda path: path.write_bytes(b"not a checkpoint file"),
    "cut short": lambda path: path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2]),
}


@pytest.fixture(scope="module")
def saved_run(rows, tokenizer, tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4, copied afresh for each test that breaks it."""
    folder = tmp_path_factory.mktemp("saved") / "run"
    train("dense", rows, tokenizer, folder)
    return folder


@pytest.mark.parametrize("name,expected", [
    ("model.safetensors", {"missing": "no model weights", "garbage": "model.safetensors is unreadable",
                           "cut short": "model.safetensors is unreadable"}),
    ("optimizer.pt", {"missing": "no optimizer state", "garbage": "optimizer.pt is unreadable",
                      "cut short": "optimizer.pt is unreadable"}),
    ("scheduler.pt", {"missing": "no scheduler.pt", "garbage": "scheduler.pt is unreadable",
                      "cut short": "scheduler.pt is unreadable"}),
    ("trainer_state.json", {"missing": "no trainer_state.json", "garbage": "trainer_state.json is unreadable",
                            "cut short": "trainer_state.json is unreadable"}),
    ("rng_state.pth", {"missing": "no RNG state (rng_state.pth)", "garbage": "rng_state.pth is unreadable",
                       "cut short": "rng_state.pth is unreadable"}),
])
@pytest.mark.parametrize("break_name", list(BREAKS))
def test_every_file_the_trainer_restores_is_checked(name, expected, break_name, saved_run, tmp_path, caplog):
    """Each file of the newest checkpoint missing, replaced by garbage or cut short: ``last`` resumes from the
    previous checkpoint with a warning naming the folder and the problem; named explicitly, it is refused by name."""
    run = shutil.copytree(saved_run, tmp_path / "run")
    newest = run / "checkpoint-4"
    assert checkpoint_problem(newest) is None
    BREAKS[break_name](newest / name)
    problem = expected[break_name]
    assert problem in checkpoint_problem(newest)
    with caplog.at_level(logging.WARNING, logger="ese_trainer.training.resume"):
        assert find_resume_checkpoint("last", str(run)) == str(run / "checkpoint-2")
    assert f"skipped {newest} ({problem}" in caplog.text
    with pytest.raises(ConfigError, match=rf"{newest} cannot be resumed from: {re.escape(problem)}"):
        find_resume_checkpoint(str(newest), str(run))


def test_a_flipped_byte_in_the_optimizer_state_fails_its_crc(saved_run, tmp_path):
    run = shutil.copytree(saved_run, tmp_path / "run")
    _flip_a_byte(run / "checkpoint-4" / "optimizer.pt")
    assert "optimizer.pt is unreadable (member" in checkpoint_problem(run / "checkpoint-4")


def test_fsdp_checkpoints_are_checked_in_accelerates_layout(saved_run, tmp_path):
    """accelerate's FSDP checkpoint files, which the Trainer's FSDP resume loads instead of transformers' own:
    ``pytorch_model_fsdp.bin`` and ``optimizer.bin`` under a full state dict (here the plain checkpoint's states saved
    under those names), ``pytorch_model_fsdp_0/`` and ``optimizer_0/`` sharded (torch.distributed.checkpoint folders,
    complete with their ``.metadata``)."""
    checkpoint = shutil.copytree(saved_run / "checkpoint-4", tmp_path / "checkpoint-4")
    state = {name: tensor for name, tensor in torch.load(checkpoint / "optimizer.pt", weights_only=True).items()}
    torch.save(state, checkpoint / "optimizer.bin")
    (checkpoint / "optimizer.pt").unlink()
    assert checkpoint_problem(checkpoint) == "no FSDP model state (pytorch_model_fsdp.bin or pytorch_model_fsdp_0/)"
    shutil.copy(checkpoint / "optimizer.bin", checkpoint / "pytorch_model_fsdp.bin")
    assert checkpoint_problem(checkpoint) is None
    (checkpoint / "pytorch_model_fsdp.bin").write_bytes(b"cut")
    assert checkpoint_problem(checkpoint).startswith("pytorch_model_fsdp.bin is unreadable")
    (checkpoint / "pytorch_model_fsdp.bin").unlink()
    (checkpoint / "optimizer.bin").unlink()
    for name in ("pytorch_model_fsdp_0", "optimizer_0"):
        (checkpoint / name).mkdir()
        (checkpoint / name / "__0_0.distcp").write_bytes(b"shard")
    assert checkpoint_problem(checkpoint) == "pytorch_model_fsdp_0/.metadata is missing"
    for name in ("pytorch_model_fsdp_0", "optimizer_0"):
        (checkpoint / name / ".metadata").write_bytes(b"metadata")
    assert checkpoint_problem(checkpoint) is None
