"""The MoE candidates of issue 33 as options: 4 experts top-2 in every layer or every second layer (nomic's placement),
the router's load-balancing loss on by default and never silently off, dead experts per layer in the run's output
and the model card, and the card's place for the MoE's measured value against the dense model."""

import json

import pytest
import torch
from transformers import AutoConfig

from ese_trainer.config.parsing import ConfigError, parse_config
from ese_trainer.data import load_sts_pairs
from ese_trainer.ese.arguments import ESEArguments
from ese_trainer.losses.arguments import LossArguments
from ese_trainer.losses.load_balancing import dead_experts
from ese_trainer.losses.router_loss import ROUTER_BALANCE
from ese_trainer.modeling import MoEBertConfig, build_moe
from ese_trainer.modeling.arguments import MoEArguments
from ese_trainer.modeling.convert import moe_config_from_dense
from ese_trainer.modeling.modeling_moe_bert import MoEBertLayer
from ese_trainer.modeling.pooling import pool
from ese_trainer.release.model_card import MOE_VALUE_FILE, build_model_card
from ese_trainer.release.routing_report import save_expert_utilisation
from ese_trainer.training.build import build_objective

from .conftest import EMBEDDED_DATA, MINILM_ID, REPO, build_tiny_moe
from .test_recipe import run_recipe
from .test_trainer import make_trainer, pairs  # noqa: F401  (pairs is a fixture)

RELEASED_DENSE = REPO / "tests" / "fixtures" / "released_v0_1" / "dense"


def test_every_second_layer_is_nomics_placement_and_starts_as_the_dense_model(minilm, tokenizer):
    """``moe.layers every_2``: experts in layers 1, 3, 5 (0-based), as nomic-embed-text-v2-moe's
    ``moe=i % moe_every_n_layers == 1`` with every 2; 4 experts top-2 by default; the model starts as the dense one."""
    (moe_args,) = parse_config(["--moe.enabled", "true", "--moe.layers", "every_2"], (MoEArguments,))
    moe = build_moe(MINILM_ID, **moe_args.moe_settings()).eval()
    nomic = [index for index in range(6) if index % 2 == 1]
    assert moe.config.moe_layer_indices == nomic == [1, 3, 5]
    assert [isinstance(layer, MoEBertLayer) for layer in moe.encoder.layer] == [False, True] * 3
    assert (moe.config.num_experts, moe.config.num_experts_per_tok) == (4, 2)
    sts = load_sts_pairs(str(EMBEDDED_DATA / "STS" / "STSBenchmark" / "sts-test.csv"))
    batch = tokenizer(sts.sentences1[:16], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours, dense = moe(**batch), minilm(**batch)
    assert len(ours.router_logits) == 3
    assert torch.allclose(pool(ours.last_hidden_state, batch["attention_mask"], "mean"),
                          pool(dense.last_hidden_state, batch["attention_mask"], "mean"), atol=1e-5)
    # start (b), all-MiniLM-L6-v2's first 3 layers: one MoE layer in the middle; "all" puts them everywhere
    assert MoEBertConfig(num_hidden_layers=3, moe_layers="every_2").moe_layer_indices == [1]
    assert MoEBertConfig(num_hidden_layers=3, moe_layers="all").moe_layer_indices == [0, 1, 2]


def test_router_balance_loss_is_on_by_default_and_its_weight_is_a_flag():
    dense = AutoConfig.from_pretrained(RELEASED_DENSE)
    default = build_objective(LossArguments(), ESEArguments(), moe_config_from_dense(dense))
    assert default.router_loss.weights[ROUTER_BALANCE] == MoEBertConfig.router_aux_loss_coef == 0.1
    (moe_args,) = parse_config(["--moe.enabled", "true", "--moe.router_aux_loss_coef", "0.001"], (MoEArguments,))
    config = moe_config_from_dense(dense, **moe_args.moe_settings())
    assert build_objective(LossArguments(), ESEArguments(), config).router_loss.weights[ROUTER_BALANCE] == 0.001


def test_router_logits_are_returned_in_training_whatever_the_config_says(tokenizer, pairs, tmp_path):  # noqa: F811
    """TRL found the router loss silently off in most MoE runs (router logits not output): a training forward here
    always returns them, so the objective always adds the balance loss."""
    model = build_tiny_moe(len(tokenizer))
    model.config.output_router_logits = False
    batch = tokenizer(["a man plays a guitar", "a dog runs"], padding=True, return_tensors="pt")
    assert model.eval()(**batch).router_logits is None  # inference: as configured
    assert len(model.train()(**batch).router_logits) == 2
    trainer = make_trainer(model, tokenizer, pairs, tmp_path, max_steps=1)
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["loss_router_aux"] >= 1.0 - 1e-4  # E·Σ f·P is at least 1 (1 when balanced)
    assert {"moe_util/layer_0/expert_0", "moe_util/layer_1/expert_3"} <= set(logged)


def test_dead_experts_are_those_below_a_tenth_of_the_balanced_share():
    assert dead_experts([0.5, 0.475, 0.024, 0.001]) == [2, 3]  # 4 experts: below 2.5%
    assert dead_experts([0.25, 0.25, 0.25, 0.25]) == []
    assert dead_experts([0.2] * 4 + [0.013, 0.012, 0.0, 0.175]) == [5, 6]  # 8 experts: below 1.25%


def test_a_run_reports_shares_and_dead_experts_per_layer_and_its_card_the_measured_value(tmp_path):
    """The recipe on the real model, experts in every second layer: the router balance loss is logged, the run's
    expert_utilisation.json and card give each MoE layer's shares and dead experts, and the card states the MoE's
    value against the dense model once a record of it is in the folder."""
    output_dir = tmp_path / "out"
    result = run_recipe("--config", "configs/moe_smoke.yaml", "--output_dir", str(output_dir), "--moe.layers",
                        "every_2", "--max_train_samples", "32", "--per_device_train_batch_size", "16", "--max_steps",
                        "2", "--eval_strategy", "no", "--eval_on_start", "false", "--save_strategy", "no",
                        "--load_best_model_at_end", "false", "--logging_steps", "1", "--suite_before_training",
                        "false", "--sts_tasks", "none")
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((output_dir / "trainer_state.json").read_text())
    train_logs = [entry for entry in state["log_history"] if "loss" in entry]
    assert train_logs and all(entry["loss_router_aux"] >= 1.0 - 1e-4 for entry in train_logs)
    summary = json.loads((output_dir / "expert_utilisation.json").read_text())
    assert set(summary["dead_experts"]) == set(summary["final"]["layers"]) == {"1", "3", "5"}
    card = (output_dir / "README.md").read_text()
    assert "| entropy | dead experts |" in card
    for layer, values in summary["final"]["layers"].items():
        assert summary["dead_experts"][layer] == dead_experts(values["shares"])
        row = (f"| {layer} | " + " | ".join(f"{share:.3f}" for share in values["shares"])
               + f" | {values['entropy']:.3f} | {', '.join(map(str, dead_experts(values['shares']))) or 'none'} |")
        assert row in card
    assert f"No comparison with the dense model is recorded with this run (`{MOE_VALUE_FILE}`)." in card

    record = {"metric": "7-task STS average, cosine Spearman x100", "seeds": 3, "record": "bench/results/moe.md",
              "comparisons": [{"budget": "equal active compute (same steps)", "moe": 72.5, "dense": 72.06},
                              {"budget": "equal wall-clock time", "moe": 72.5, "dense": 72.61}]}
    (output_dir / MOE_VALUE_FILE).write_text(json.dumps(record))
    card = build_model_card(output_dir).text
    assert ("Measured against the dense model (7-task STS average, cosine Spearman x100, mean of 3 seed(s); record: "
            "`bench/results/moe.md`):") in card
    assert "| equal active compute (same steps) | 72.50 | 72.06 | +0.44 |" in card
    assert "| equal wall-clock time | 72.50 | 72.61 | -0.11 |" in card
    del record["comparisons"][1]["dense"]
    (output_dir / MOE_VALUE_FILE).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=rf"{MOE_VALUE_FILE}: not a record of the MoE against the dense model "
                                          r"\(KeyError: 'dense'\)"):
        build_model_card(output_dir)


def test_the_routing_summary_names_the_dead_experts_of_each_layer(tokenizer, pairs, tmp_path):  # noqa: F811
    trainer = make_trainer(build_tiny_moe(len(tokenizer)), tokenizer, pairs, tmp_path, max_steps=2)
    trainer.train()
    summary = save_expert_utilisation(trainer.state.log_history, tmp_path, 4, 2)
    assert set(summary["dead_experts"]) == set(summary["final"]["layers"]) == {"0", "1"}
    for layer, values in summary["final"]["layers"].items():
        assert summary["dead_experts"][layer] == dead_experts(values["shares"])
