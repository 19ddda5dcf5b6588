"""The MoE BERT encoder on the real all-MiniLM-L6-v2: function preservation, routing, losses, save/load, errors."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModel, BertConfig, BertModel, DistilBertConfig, DistilBertModel

from ese_trainer.data import load_sts_pairs
from ese_trainer.losses import RouterLoss
from ese_trainer.modeling import (
    MoEBertConfig,
    MoEBertModel,
    MoEConversionError,
    MoELoadingError,
    build_moe,
)
from ese_trainer.modeling.modeling_moe_bert import BertSparseMoeBlock
from ese_trainer.modeling.pooling import pool

from .conftest import EMBEDDED_DATA, MINILM_ID, REPO


@pytest.fixture(scope="module")
def sts_batch(tokenizer):
    pairs = load_sts_pairs(str(EMBEDDED_DATA / "STS" / "STSBenchmark" / "sts-test.csv"))
    sentences = pairs.sentences1[:24] + pairs.sentences2[:24]
    return tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")


def embeddings(model, batch, pooling="mean"):
    with torch.no_grad():
        return pool(model(**batch).last_hidden_state, batch["attention_mask"], pooling)


@pytest.mark.parametrize("moe_type", ["upcycled", "residual"])
def test_function_preserving_at_initialisation(minilm, sts_batch, moe_type):
    moe = build_moe(MINILM_ID, moe_type=moe_type, num_experts=4, num_experts_per_tok=2).eval()
    assert len(moe.moe_layers()) == 6
    assert sts_batch["attention_mask"].float().mean() < 0.9  # the batch really has padding
    for pooling in ("mean", "cls"):
        assert torch.allclose(embeddings(moe, sts_batch, pooling), embeddings(minilm, sts_batch, pooling), atol=1e-5)


def test_trained_experts_change_the_function(minilm, sts_batch):
    """The preservation test can fail: perturbing one residual expert moves the embeddings."""
    moe = build_moe(MINILM_ID, moe_type="residual").eval()
    with torch.no_grad():
        moe.encoder.layer[2].moe.experts[0].down.weight.normal_(std=0.05)
    assert (embeddings(moe, sts_batch) - embeddings(minilm, sts_batch)).abs().max() > 1e-3


def test_batched_routing_equals_per_token_reference(sts_batch):
    torch.manual_seed(0)
    config = MoEBertConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                           num_experts=4, num_experts_per_tok=2, moe_type="upcycled")
    block = BertSparseMoeBlock(config)
    hidden = torch.randn(3, 7, 16)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], dtype=torch.bool)
    output, logits = block(hidden, mask)
    assert logits.shape == (int(mask.sum()), 4)  # padding tokens are not routed
    expected = torch.zeros_like(hidden)
    for b, t in mask.nonzero().tolist():
        x = hidden[b, t]
        probs = F.softmax(block.router(x), dim=-1)
        top = probs.topk(2)
        weights = top.values / top.values.sum()
        expected[b, t] = sum(w * block.experts[e](x) for w, e in zip(weights, top.indices.tolist()))
    assert torch.allclose(output, expected, atol=1e-6)
    assert torch.all(output[~mask] == 0)
    # padding content has no effect on what real tokens get
    noisy = hidden.clone()
    noisy[~mask] = torch.randn(int((~mask).sum()), 16) * 100
    assert torch.allclose(block(noisy, mask)[0], output, atol=1e-6)


def test_every_expert_gets_a_gradient_even_without_tokens():
    """What lets DDP run with find_unused_parameters=False: no expert parameter is ever left out of the graph."""
    config = MoEBertConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=1,
                           num_experts=4, num_experts_per_tok=2)
    block = BertSparseMoeBlock(config)
    with torch.no_grad():
        block.router.weight.copy_(torch.ones(4, 8))
        block.router.weight[3] = -10.0  # positive inputs never pick expert 3
    hidden = torch.rand(2, 5, 8) + 0.1
    output, logits = block(hidden, torch.ones(2, 5, dtype=torch.bool))
    assert 3 not in logits.topk(2).indices.unique().tolist()
    output.sum().backward()
    assert all(parameter.grad is not None for parameter in block.parameters())
    assert block.experts[3].up.weight.grad.abs().sum() == 0


def test_router_losses():
    uniform = (torch.zeros(10, 4),)
    # all probabilities 1/4; ties pick the same top-2, so f = (1/2, 1/2, 0, 0) and 4 * Σ f·P = 1
    assert torch.isclose(RouterLoss(2, 0.1, 0.001)(uniform)["loss_router_aux"], torch.tensor(1.0))
    collapsed = (torch.tensor([[10.0, 0, 0, 0]] * 10),)
    assert RouterLoss(1, 0.1, 0.001)(collapsed)["loss_router_aux"] > 3.9  # everything to one expert: ~E
    logits = (torch.randn(6, 4), torch.randn(3, 4), torch.zeros(0, 4))  # a layer that routed no token is skipped
    expected = torch.stack([torch.logsumexp(x, -1).pow(2).mean() for x in logits[:2]]).mean()
    terms = RouterLoss(2, 0.1, 0.001)(logits)
    assert torch.isclose(terms["loss_router_z"], expected)
    assert torch.isclose(RouterLoss(2, 0.1, 0.001).combine(terms),
                         0.1 * terms["loss_router_aux"] + 0.001 * terms["loss_router_z"])


def test_saved_model_loads_with_remote_code_and_sentence_transformers(tmp_path, tokenizer, sts_batch):
    from ese_trainer.release.export import save_sentence_transformer

    moe = build_moe(MINILM_ID, moe_type="residual", moe_layers="every_2").eval()
    with torch.no_grad():  # trained-looking experts, so a silently re-initialised expert would show
        for layer in moe.moe_layers():
            for expert in layer.moe.experts:
                expert.down.weight.normal_(std=0.02)
    save_sentence_transformer(moe, tokenizer, tmp_path, "mean", 128)
    assert {"modeling_moe_bert.py", "configuration_moe_bert.py"} <= {p.name for p in tmp_path.iterdir()}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "ese_moe_bert" and "AutoModel" in config["auto_map"]
    sentences = ["A man is playing a guitar.", "Two dogs run through a field.", "It is raining."]
    ours = pool(moe(**tokenizer(sentences, padding=True, return_tensors="pt")).last_hidden_state,
                tokenizer(sentences, padding=True, return_tensors="pt")["attention_mask"], "mean")
    # A fresh interpreter that never imports this package: only the folder's own code is available.
    script = textwrap.dedent(f"""
        import json, sys, torch
        assert "ese_trainer" not in sys.modules
        from sentence_transformers import SentenceTransformer
        from transformers import AutoModel, AutoTokenizer
        sentences = {sentences!r}
        st = SentenceTransformer({str(tmp_path)!r}, trust_remote_code=True, device="cpu")
        model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        tok = AutoTokenizer.from_pretrained({str(tmp_path)!r})
        batch = tok(sentences, padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        mean = ((hidden * mask).sum(1) / mask.sum(1)).tolist()
        print("RESULT=" + json.dumps({{"st": st.encode(sentences).tolist(), "hf": mean,
                                      "module": type(model).__module__}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                              "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.split("RESULT=", 1)[1].splitlines()[0])
    assert loaded["module"].startswith("transformers_modules")
    for key in ("st", "hf"):
        cosine = F.cosine_similarity(torch.tensor(loaded[key]), ours.detach(), dim=-1)
        assert cosine.min() >= 0.99999


def test_moe_slice_export_round_trips(tmp_path, tokenizer):
    """An ESE-style (layer, dim) slice of an MoE encoder: only the first layers are kept, experts included."""
    from sentence_transformers import SentenceTransformer

    from ese_trainer.release.export import export_slice

    moe = build_moe(MINILM_ID, moe_type="residual", moe_layers=[0, 2, 4]).eval()
    with torch.no_grad():
        for layer in moe.moe_layers():
            for expert in layer.moe.experts:
                expert.down.weight.normal_(std=0.02)
    export_slice(moe, tokenizer, tmp_path, "mean", layer=3, dim=128)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and config["moe_layers"] == [0, 2]
    pairs = load_sts_pairs(str(EMBEDDED_DATA / "STS" / "STSBenchmark" / "sts-test.csv"))
    sentences = pairs.sentences1[:64]
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = moe(**batch, output_hidden_states=True).hidden_states[3]
    expected = pool(hidden, batch["attention_mask"], "mean")[:, :128]
    loaded = SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu")
    got = loaded.encode(sentences, convert_to_tensor=True)
    assert got.shape == (64, 128)
    assert F.cosine_similarity(got, expected, dim=-1).min() >= 0.99999


def test_missing_or_unexpected_weights_are_an_error(tmp_path):
    moe = build_moe(MINILM_ID, moe_layers=[0, 5])
    moe.save_pretrained(tmp_path)
    assert isinstance(AutoModel.from_pretrained(tmp_path), MoEBertModel)
    weights = load_file(tmp_path / "model.safetensors")
    dropped = {key: value for key, value in weights.items() if "layer.5.moe.experts.3." not in key}
    save_file(dropped, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MoELoadingError, match=r"missing keys: \['encoder.layer.5.moe.experts.3"):
        AutoModel.from_pretrained(tmp_path)
    save_file({**weights, "encoder.layer.1.moe.router.weight": torch.zeros(4, 384)}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(MoELoadingError, match="unexpected keys"):
        AutoModel.from_pretrained(tmp_path)


def test_bad_settings_fail_before_training(tmp_path):
    with pytest.raises(MoEConversionError, match="num_experts_per_tok must be in 1..num_experts"):
        build_moe(MINILM_ID, num_experts=2, num_experts_per_tok=3)
    with pytest.raises(MoEConversionError, match=r"moe_layers \[6\]"):
        build_moe(MINILM_ID, moe_layers=[6])
    with pytest.raises(MoEConversionError, match="norm_topk_prob"):
        build_moe(MINILM_ID, norm_topk_prob=False)
    DistilBertModel(DistilBertConfig(n_layers=1, dim=32, hidden_dim=64, n_heads=2)).save_pretrained(tmp_path / "db")
    with pytest.raises(MoEConversionError, match="needs a BERT checkpoint"):
        build_moe(str(tmp_path / "db"))
    BertModel(BertConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2)
              ).save_pretrained(tmp_path / "bert")
    assert len(build_moe(str(tmp_path / "bert")).moe_layers()) == 1


def test_moe_step_script_runs(tmp_path):
    """Not a timing assertion: the benchmark runs end to end and writes its results file."""
    pytest.importorskip("bench.moe_step")
    result = subprocess.run([sys.executable, "-m", "bench.moe_step", "--steps", "1", "--warmup", "0",
                             "--batch_size", "4", "--output", str(tmp_path / "moe_step.json")],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"upcycled", "residual"} <= set(json.loads((tmp_path / "moe_step.json").read_text())["results"])


def test_moe_section_and_dotted_overrides_parse():
    from ese_trainer.config.parsing import parse_config
    from recipes.train_nli import ARGUMENT_GROUPS

    parsed = parse_config(["--config", str(REPO / "configs" / "moe_smoke.yaml"), "--moe.num_experts", "8",
                           "--moe_layers", "1", "3"], ARGUMENT_GROUPS)
    moe_args = parsed[3]
    assert moe_args.moe_enabled and moe_args.moe_router_learning_rate == 2e-4
    assert moe_args.moe_settings() == {
        "moe_type": "upcycled", "num_experts": 8, "num_experts_per_tok": 2, "moe_layers": [1, 3],
        "router_jitter_noise": 0.0, "router_aux_loss_coef": 0.1, "router_z_loss_coef": 0.001,
    }


def test_moe_key_without_moe_is_refused(tmp_path):
    from .test_recipe import run_recipe

    result = run_recipe("--config", "configs/smoke.yaml", "--output_dir", str(tmp_path), "--moe.num_experts", "8")
    assert result.returncode == 2
    assert "moe.num_experts set but moe.enabled is false" in result.stderr


def test_moe_on_an_moe_checkpoint_is_refused(tmp_path, tokenizer):
    from .test_recipe import run_recipe

    build_moe(MINILM_ID, moe_layers=[0]).save_pretrained(tmp_path / "moe")
    tokenizer.save_pretrained(tmp_path / "moe")
    result = run_recipe("--config", "configs/moe_smoke.yaml", "--output_dir", str(tmp_path / "out"),
                        "--model_name_or_path", str(tmp_path / "moe"))
    assert result.returncode == 2
    assert "is already an MoE model" in result.stderr
