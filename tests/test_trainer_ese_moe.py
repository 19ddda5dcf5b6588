"""ESETrainer with ESE terms and with an MoE encoder: what enters the loss, what is logged, what is optimised."""

import pytest
import torch
from transformers import BertModel

from ese_trainer.arguments import ESEArguments, LossArguments
from ese_trainer.collator import PairCollator
from ese_trainer.ese import combine_ese_terms, ese_terms
from ese_trainer.modeling import MoEBertConfig, MoEBertModel, load_balancing_loss, router_z_loss
from ese_trainer.pooling import pool
from ese_trainer.trainer import ESE_HEADS_FILE

from .test_trainer import make_trainer, pairs  # noqa: F401  (pairs is a fixture)


def tiny_moe(vocab_size: int) -> MoEBertModel:
    torch.manual_seed(0)
    config = MoEBertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0, num_experts=4, num_experts_per_tok=2)
    return MoEBertModel(config, add_pooling_layer=False)


def test_ese_loss_is_main_loss_plus_weighted_ese_terms(tiny_bert, tokenizer, pairs, tmp_path):  # noqa: F811
    ese = ESEArguments(ese_enabled=True, ese_compression_size=8, ese_layer_weighting="uniform",
                       ese_last_layer_weight=0.5, ese_prior_layers_weight=2.0)
    trainer = make_trainer(tiny_bert, tokenizer, pairs, tmp_path, LossArguments(ibn_w=0.0, angle_w=0.0),
                           ese_args=ese)
    assert trainer.ese_layers == [1]  # students: transformer layers 1..n-1, never the embedding output
    batch = PairCollator(tokenizer, 64)([pairs[i] for i in range(8)])
    loss = trainer.compute_loss(tiny_bert, batch)
    hidden = tiny_bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"], output_hidden_states=True).hidden_states
    layers = {layer: pool(hidden[layer], batch["attention_mask"], "mean").chunk(2) for layer in (1, 2)}
    from ese_trainer.losses import cosine_loss

    def pair_loss(emb_a, emb_b):
        return cosine_loss(emb_a, emb_b, batch["scores"], 20.0)

    terms = ese_terms(layers, 2, pair_loss, 8, 1.0, "uniform", 0.5, 2.0)
    expected = pair_loss(*layers[2]) + combine_ese_terms(terms, 0.5, 2.0)
    assert torch.allclose(loss, expected, atol=1e-5)


def test_ese_moe_target_heads_are_trained_logged_and_checkpointed(tiny_bert, tokenizer, pairs, tmp_path):  # noqa: F811
    ese = ESEArguments(ese_enabled=True, ese_compression_size=8, ese_compression_target="moe",
                       ese_moe_expert_hidden=16)
    trainer = make_trainer(tiny_bert, tokenizer, pairs, tmp_path, max_steps=2, optim="adamw_torch",
                           learning_rate=1e-3, save_strategy="steps", save_steps=2, ese_args=ese)
    heads_before = {name: p.detach().clone() for name, p in trainer.ese_heads.named_parameters()}
    trainer.train()
    changed = [name for name, p in trainer.ese_heads.named_parameters() if not torch.equal(p, heads_before[name])]
    assert changed, "the target heads are not optimised"
    # cleared after each optimizer step, like the encoder's (else they would sum over all steps)
    assert all(p.grad is None for p in trainer.ese_heads.parameters())
    [head_group] = [group for group in trainer.optimizer.param_groups
                    if any(p is next(trainer.ese_heads.parameters()) for p in group["params"])]
    assert trainer.lr_scheduler.base_lrs[trainer.optimizer.param_groups.index(head_group)] == 1e-3
    logged = trainer.state.log_history[0]
    assert {"loss_ese", "loss_ese_last_compressed", "loss_ese_distill_last", "loss_ese_prior",
            "loss_ese_distill_prior", "loss_ese_moe_reconstruction", "loss_ese_moe_balance"} <= set(logged)
    shares = [logged[f"ese_head_util/layer_1/expert_{expert}"] for expert in range(4)]
    assert sum(shares) == pytest.approx(1.0, abs=1e-3)
    saved = torch.load(tmp_path / "checkpoint-2" / ESE_HEADS_FILE)
    current = trainer.ese_heads.state_dict()
    assert saved.keys() == current.keys() and all(torch.equal(saved[key], current[key]) for key in saved)


def test_moe_router_losses_enter_the_loss_and_are_logged(tokenizer, pairs, tmp_path):  # noqa: F811
    model = tiny_moe(len(tokenizer))
    trainer = make_trainer(model, tokenizer, pairs, tmp_path, LossArguments(ibn_w=0.0, angle_w=0.0), max_steps=2,
                           optim="adamw_torch", learning_rate=1e-4, router_learning_rate=1e-2)
    batch = PairCollator(tokenizer, 64)([pairs[i] for i in range(8)])
    loss = trainer.compute_loss(model, batch)
    output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   token_type_ids=batch["token_type_ids"])
    assert sum(logits.shape[0] for logits in output.router_logits[:1]) == int(batch["attention_mask"].sum())
    from ese_trainer.losses import cosine_loss

    emb_a, emb_b = pool(output.last_hidden_state, batch["attention_mask"], "mean").chunk(2)
    expected = (cosine_loss(emb_a, emb_b, batch["scores"], 20.0) + 0.1 * load_balancing_loss(output.router_logits, 2)
                + 0.001 * router_z_loss(output.router_logits))
    assert torch.allclose(loss, expected, atol=1e-5)
    trainer.train()
    logged = trainer.state.log_history[0]
    assert {"loss_router_aux", "loss_router_z", "moe_entropy/layer_0", "moe_util/layer_1/expert_3"} <= set(logged)
    router_groups = [group for group in trainer.optimizer.param_groups if group.get("lr") and
                     any(p is model.encoder.layer[0].moe.router.weight for p in group["params"])]
    assert len(router_groups) == 1 and len(router_groups[0]["params"]) == 2  # one router per layer
    assert trainer.lr_scheduler.base_lrs[trainer.optimizer.param_groups.index(router_groups[0])] == 1e-2


def test_ese_settings_checked_against_the_model(tiny_bert, tokenizer, pairs, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match=r"compression_size=32 must be in 1..31"):
        make_trainer(tiny_bert, tokenizer, pairs, tmp_path, ese_args=ESEArguments(ese_enabled=True,
                                                                                  ese_compression_size=32))
    with pytest.raises(ValueError, match="ibn_cache"):
        make_trainer(tiny_bert, tokenizer, pairs, tmp_path, LossArguments(ibn_cache=True),
                     ese_args=ESEArguments(ese_enabled=True, ese_compression_size=8))
    with pytest.raises(ValueError, match="ese.compression_size set but ese.enabled is false"):
        ESEArguments(ese_compression_size=8)
    with pytest.raises(ValueError, match="ese.layer_weighting must be one of"):
        ESEArguments(ese_enabled=True, ese_layer_weighting="cubic")


def test_dense_bert_has_no_moe_state(tiny_bert, tokenizer, pairs, tmp_path):  # noqa: F811
    trainer = make_trainer(tiny_bert, tokenizer, pairs, tmp_path)
    assert isinstance(tiny_bert, BertModel) and trainer.moe_config is None and trainer.routing is None
