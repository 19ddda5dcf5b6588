"""ESETrainer with ESE terms and with an MoE encoder: what enters the loss, what is logged, what is optimised."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertModel

from ese_trainer.data.collator import RowCollator
from ese_trainer.ese.arguments import ESEArguments
from ese_trainer.ese.loss import combine_ese_terms, ese_terms
from ese_trainer.losses import RowBatch, cosent_loss, router_z_loss, switch_balance_loss
from ese_trainer.losses.arguments import LossArguments
from ese_trainer.modeling.pooling import pool
from ese_trainer.training.build import ESE_HEAD_PARAMETERS, ROUTER_PARAMETERS

from .conftest import build_tiny_moe
from .test_trainer import make_trainer, pairs  # noqa: F401  (pairs is a fixture)


def test_ese_loss_is_main_loss_plus_weighted_ese_terms(tiny_bert, tokenizer, pairs, tmp_path):  # noqa: F811
    ese = ESEArguments(ese_enabled=True, ese_schedule="espresso", ese_compression_size=8, ese_layer_weighting="uniform",
                       ese_last_layer_weight=0.5, ese_prior_layers_weight=2.0)
    trainer = make_trainer(tiny_bert, tokenizer, pairs, tmp_path, LossArguments(ibn_w=0.0, angle_w=0.0, hinge_w=0.0),
                           ese_args=ese)
    # students: transformer layers 1..n-1, never the embedding output
    assert trainer.model.objective.student_layers == trainer.model.encoder.pooled_layers == [1]
    batch = RowCollator(tokenizer, 64)([pairs[i] for i in range(8)])
    loss = trainer.compute_loss(trainer.model, batch)
    hidden = tiny_bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"], output_hidden_states=True).hidden_states
    layers = {layer: pool(hidden[layer], batch["attention_mask"], "mean") for layer in (1, 2)}
    first, second, scores = RowBatch(layers[2], batch["other_row"], batch["other_role"],
                                     batch["other_score"]).scored_pairs()

    def pair_loss(embeddings):
        return cosent_loss(embeddings[first], embeddings[second], scores, 20.0)

    terms = ese_terms(layers, 2, pair_loss, 8, 1.0, "uniform", 0.5, 2.0)
    expected = pair_loss(layers[2]) + combine_ese_terms(terms, 0.5, 2.0)
    assert torch.allclose(loss, expected, atol=1e-5)


def test_ese_moe_target_heads_are_trained_logged_and_checkpointed(tiny_bert, tokenizer, pairs, tmp_path):  # noqa: F811
    ese = ESEArguments(ese_enabled=True, ese_schedule="espresso", ese_compression_size=8, ese_compression_target="moe",
                       ese_head_expert_hidden=16)
    trainer = make_trainer(tiny_bert, tokenizer, pairs, tmp_path, max_steps=2, optim="adamw_torch",
                           learning_rate=1e-3, save_strategy="steps", save_steps=2, ese_args=ese,
                           learning_rates={ESE_HEAD_PARAMETERS: 1e-3})
    heads = trainer.model.objective.ese_loss.heads
    heads_before = {name: p.detach().clone() for name, p in heads.named_parameters()}
    trainer.train()
    changed = [name for name, p in heads.named_parameters() if not torch.equal(p, heads_before[name])]
    assert changed, "the target heads are not optimised"
    # cleared by the Trainer's own zero_grad, like the encoder's (else they would sum over all steps)
    assert all(p.grad is None or not p.grad.any() for p in heads.parameters())
    [head_group] = [group for group in trainer.optimizer.param_groups
                    if any(p is next(heads.parameters()) for p in group["params"])]
    assert trainer.lr_scheduler.base_lrs[trainer.optimizer.param_groups.index(head_group)] == 1e-3
    logged = trainer.state.log_history[0]
    assert {"loss_ese", "loss_ese_last_compressed", "loss_ese_distill_last", "loss_ese_prior",
            "loss_ese_distill_prior", "loss_ese_head_reconstruction", "loss_ese_head_balance"} <= set(logged)
    shares = [logged[f"ese_head_util/layer_1/expert_{expert}"] for expert in range(4)]
    assert sum(shares) == pytest.approx(1.0, abs=1e-3)
    # the heads are part of the trained model: every checkpoint holds them
    saved = load_file(tmp_path / "checkpoint-2" / "model.safetensors")
    current = {f"objective.ese_loss.heads.{key}": value for key, value in heads.state_dict().items()}
    assert all(torch.equal(saved[key], value) for key, value in current.items())


def test_moe_router_losses_enter_the_loss_and_are_logged(tokenizer, pairs, tmp_path):  # noqa: F811
    model = build_tiny_moe(len(tokenizer))
    trainer = make_trainer(model, tokenizer, pairs, tmp_path, LossArguments(ibn_w=0.0, angle_w=0.0, hinge_w=0.0),
                           max_steps=2, optim="adamw_torch", learning_rate=1e-4,
                           learning_rates={ROUTER_PARAMETERS: 1e-2})
    batch = RowCollator(tokenizer, 64)([pairs[i] for i in range(8)])
    loss = trainer.compute_loss(trainer.model, batch)
    output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   token_type_ids=batch["token_type_ids"])
    assert sum(logits.shape[0] for logits in output.router_logits[:1]) == int(batch["attention_mask"].sum())
    embeddings = pool(output.last_hidden_state, batch["attention_mask"], "mean")
    first, second, scores = RowBatch(embeddings, batch["other_row"], batch["other_role"],
                                     batch["other_score"]).scored_pairs()
    balance = torch.stack([switch_balance_loss(logits, 2) for logits in output.router_logits]).mean()
    z_loss = torch.stack([router_z_loss(logits) for logits in output.router_logits]).mean()
    expected = (cosent_loss(embeddings[first], embeddings[second], scores, 20.0) + 0.1 * balance
                + 0.001 * z_loss)
    assert torch.allclose(loss, expected, atol=1e-5)
    trainer.train()
    logged = trainer.state.log_history[0]
    assert {"loss_router_aux", "loss_router_z", "moe_entropy/layer_0", "moe_util/layer_1/expert_3"} <= set(logged)
    router_groups = [group for group in trainer.optimizer.param_groups if group.get("lr") and
                     any(p is model.encoder.layer[0].moe.router.weight for p in group["params"])]
    assert len(router_groups) == 1 and len(router_groups[0]["params"]) == 2  # one router per layer
    assert trainer.lr_scheduler.base_lrs[trainer.optimizer.param_groups.index(router_groups[0])] == 1e-2


def test_ese_settings_checked_against_the_model(tiny_bert, tokenizer, pairs, tmp_path):  # noqa: F811
    from ese_trainer.config.parsing import ConfigError

    with pytest.raises(ConfigError, match=r"ese.compression_size=32 must be in 1..31"):
        make_trainer(tiny_bert, tokenizer, pairs, tmp_path, ese_args=ESEArguments(ese_enabled=True,
                                                                                  ese_schedule="espresso",
                                                                                  ese_compression_size=32))
    with pytest.raises(ValueError, match="ese.compression_size set but ese.enabled is false"):
        ESEArguments(ese_compression_size=8)
    with pytest.raises(ValueError, match="ese.layer_weighting must be one of"):
        ESEArguments(ese_enabled=True, ese_schedule="espresso", ese_layer_weighting="cubic")


def test_dense_bert_has_no_routing(tiny_bert, tokenizer, pairs, tmp_path):  # noqa: F811
    trainer = make_trainer(tiny_bert, tokenizer, pairs, tmp_path)
    assert isinstance(tiny_bert, BertModel) and trainer.model.objective.router_loss is None
    assert trainer.recorder.tallies == {}


def test_a_run_shorter_than_a_logging_window_still_logs_its_terms_and_routing(tokenizer, pairs, tmp_path):  # noqa: F811
    from ese_trainer.release.routing_report import save_expert_utilisation

    model = build_tiny_moe(len(tokenizer))
    trainer = make_trainer(model, tokenizer, pairs, tmp_path, max_steps=2, logging_steps=10)
    trainer.train()
    final = trainer.state.log_history[-1]
    assert "train_runtime" in final and {"loss_cosent", "loss_router_aux", "moe_util/layer_1/expert_0"} <= set(final)
    summary = save_expert_utilisation(trainer.state.log_history, tmp_path, 4, 2)
    assert summary["final"]["step"] == 2 and (tmp_path / "expert_utilisation.json").is_file()
