"""ESETrainer: combined loss, per-term logs, gradient accumulation scaling, non-finite loss stop."""

import copy

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

from ese_trainer.data.collator import RowCollator
from ese_trainer.ese.arguments import ESEArguments
from ese_trainer.losses import (
    InBatchCandidates,
    InBatchSettings,
    RowBatch,
    angle_loss,
    cosent_loss,
    in_batch_negatives_loss,
)
from ese_trainer.losses.arguments import LossArguments
from ese_trainer.modeling.encoding import SentenceEncoder
from ese_trainer.modeling.pooling import pool
from ese_trainer.training.build import build_objective
from ese_trainer.training.trainer import ESETrainer, NonFiniteLossError

from .conftest import snli_rows


@pytest.fixture(scope="module")
def pairs():
    return snli_rows(16, seed=3)


def make_trainer(model, tokenizer, dataset, tmp_path, loss_args=None, ese_args=None, learning_rates=None,
                 **overrides):
    """The trainer the recipe builds (its objective from the same arguments), on a tiny model and plain SGD."""
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, learning_rate=0.5,
                    optim="sgd", lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
                    logging_steps=1, save_strategy="no", report_to="none", remove_unused_columns=False,
                    train_sampling_strategy="sequential", use_cpu=True, seed=0, dataloader_pin_memory=False)
    settings.update(overrides)
    objective = build_objective(loss_args or LossArguments(), ese_args or ESEArguments(), model.config)
    return ESETrainer(SentenceEncoder(model, "mean"), objective, args=TrainingArguments(**settings),
                      train_dataset=dataset, data_collator=RowCollator(tokenizer, 64), processing_class=tokenizer,
                      learning_rates=learning_rates)


def test_compute_loss_is_weighted_sum_of_terms(tiny_bert, tokenizer, pairs, tmp_path):
    loss_args = LossArguments(cosent_w=0.5, ibn_w=2.0, angle_w=0.25, cosent_scale=10, ibn_scale=30, angle_scale=5)
    trainer = make_trainer(tiny_bert, tokenizer, pairs, tmp_path, loss_args)
    batch = RowCollator(tokenizer, 64)([pairs[i] for i in range(8)])
    loss = trainer.compute_loss(trainer.model, batch)
    hidden = tiny_bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"]).last_hidden_state
    embeddings = pool(hidden, batch["attention_mask"], "mean")
    layout = RowBatch(embeddings, batch["other_row"], batch["other_role"], batch["other_score"], batch["text_ids"])
    first, second, scores = layout.scored_pairs()
    documents, doc_row, positive = layout.documents()
    ids = batch["text_ids"]
    ibn = in_batch_negatives_loss(InBatchCandidates(embeddings[:8], embeddings[documents], doc_row, positive, ids[:8],
                                                    ids[documents]), InBatchSettings(scale=30))
    expected = (0.5 * cosent_loss(embeddings[first], embeddings[second], scores, 10) + 2.0 * ibn
                + 0.25 * angle_loss(embeddings[first], embeddings[second], scores, 5))
    assert torch.allclose(loss, expected, atol=1e-5)


def test_gradient_accumulation_uses_mean_micro_batch_loss(tiny_bert, tokenizer, pairs, tmp_path):
    reference = copy.deepcopy(tiny_bert)  # no dropout in the tiny BERT
    trainer = make_trainer(tiny_bert, tokenizer, pairs, tmp_path, gradient_accumulation_steps=2)
    reference_trainer = make_trainer(reference, tokenizer, pairs, tmp_path)
    collate = RowCollator(tokenizer, 64)
    micro_losses, micro_cosent = [], []
    for start in (0, 4):
        batch = collate([pairs[i] for i in range(start, start + 4)])
        output = reference_trainer.model(**batch)
        (output.loss / 2).backward()
        micro_losses.append(output.loss.item())
        micro_cosent.append(cosent_loss(output.pairs.emb_a, output.pairs.emb_b, output.pairs.scores).item())
    before = {name: p.detach().clone() for name, p in tiny_bert.named_parameters()}
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["loss"] == pytest.approx(sum(micro_losses) / 2, rel=1e-4)
    for name, parameter in tiny_bert.named_parameters():
        expected_step = -0.5 * dict(reference.named_parameters())[name].grad
        assert torch.allclose(parameter.detach() - before[name], expected_step, atol=1e-6), name
    assert {"loss_cosent", "loss_ibn", "loss_angle"} <= set(logged)
    assert logged["loss_cosent"] == pytest.approx(sum(micro_cosent) / 2, rel=1e-4)


def test_only_weighted_terms_are_logged(tiny_bert, tokenizer, pairs, tmp_path):
    trainer = make_trainer(tiny_bert, tokenizer, pairs, tmp_path, LossArguments(ibn_w=0.0, angle_w=0.0, hinge_w=0.0),
                           max_steps=2)
    trainer.train()
    logged = trainer.state.log_history[0]
    assert "loss_cosent" in logged and "loss_ibn" not in logged and "loss_angle" not in logged
    assert logged["loss"] == pytest.approx(logged["loss_cosent"], rel=1e-3)


class _CorruptWeightsAfterFirstCheckpoint(TrainerCallback):
    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1:
            with torch.no_grad():
                model.encoder.transformer.embeddings.word_embeddings.weight.fill_(float("nan"))


def test_non_finite_loss_names_step_and_last_checkpoint(tiny_bert, tokenizer, pairs, tmp_path):
    trainer = make_trainer(tiny_bert, tokenizer, pairs, tmp_path, max_steps=3, save_strategy="steps", save_steps=1)
    trainer.add_callback(_CorruptWeightsAfterFirstCheckpoint())
    with pytest.raises(NonFiniteLossError, match=r"step 2 .*last good checkpoint: .*checkpoint-1.*resume with"):
        trainer.train()
