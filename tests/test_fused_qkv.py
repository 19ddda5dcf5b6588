"""Queries, keys and values from one projection (``ese_trainer/modeling/fused_qkv.py``) on the real all-MiniLM-L6-v2
and real SNLI rows: the same embeddings and gradients as BERT's three projections, packed and padded, in float32 and
under bf16 autocast; the same parameters and saved weights; one projection GEMM per layer."""

import pytest
import torch
from transformers import AutoModel
from transformers.models.bert.modeling_bert import BertSelfAttention

from ese_trainer.data.collator import RowCollator
from ese_trainer.modeling.arguments import ModelArguments, MoEArguments
from ese_trainer.modeling.encoding import SentenceEncoder
from ese_trainer.modeling.fused_qkv import FusedQKVSelfAttention, fuse_qkv
from ese_trainer.modeling.loading import load_tokenizer_and_encoder

from .conftest import build_tiny_moe, snli_rows


@pytest.fixture(scope="module")
def loaded():
    return load_tokenizer_and_encoder(ModelArguments(), MoEArguments())


@pytest.fixture(scope="module")
def batch(loaded):
    rows = snli_rows(8, seed=11)
    return RowCollator(loaded[0], 128)(rows)


def unfused(model):
    plain = AutoModel.from_pretrained(model.name_or_path)
    plain.load_state_dict(model.state_dict())
    assert not any(isinstance(module, FusedQKVSelfAttention) for module in plain.modules())
    return plain


def embeddings_and_grads(model, batch, packed: bool, bf16: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        embeddings = SentenceEncoder(model.eval(), "mean", packed=packed)(batch).embeddings.float()
    embeddings.square().sum().backward()
    return embeddings.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def test_the_recipe_loads_fused_attention_with_bert_parameters_and_weights(loaded, tmp_path):
    _, model = loaded
    layers = model.config.num_hidden_layers
    assert sum(type(module) is FusedQKVSelfAttention for module in model.modules()) == layers
    plain = unfused(model)
    assert model.state_dict().keys() == plain.state_dict().keys()
    model.save_pretrained(tmp_path / "saved")
    reloaded = AutoModel.from_pretrained(tmp_path / "saved")
    assert sum(type(module) is BertSelfAttention for module in reloaded.modules()) == layers
    assert all(torch.equal(value, reloaded.state_dict()[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_embeddings_and_gradients_equal_the_three_projections(loaded, batch, packed, bf16):
    _, model = loaded
    ours, our_grads = embeddings_and_grads(model, batch, packed, bf16)
    theirs, their_grads = embeddings_and_grads(unfused(model), batch, packed, bf16)
    assert our_grads.keys() == their_grads.keys() and any("attention.self.query" in name for name in our_grads)
    tolerance = 2e-2 if bf16 else 1e-5  # bf16 rounds each projection's output; float32 only the GEMM's summation
    assert torch.allclose(ours, theirs, atol=tolerance, rtol=tolerance)
    largest = max(grad.abs().max() for grad in their_grads.values())
    for name, grad in our_grads.items():
        if name.endswith("key.bias"):  # exactly 0 (the softmax ignores a shift shared by all keys): rounding alone
            assert grad.abs().max() < 1e-3 * largest and their_grads[name].abs().max() < 1e-3 * largest
            continue
        scale = their_grads[name].abs().max()
        assert (grad - their_grads[name]).abs().max() / scale < (5e-2 if bf16 else 1e-4), name


def test_one_projection_gemm_per_layer(loaded, batch):
    """Forward: one matmul with bias for Q, K and V together, the attention output, FFN in and out: 4 per layer
    against BERT's 6. A layer whose weights DeepSpeed ZeRO-3 partitions (gathered only as each module runs) keeps
    BERT's three."""
    _, model = loaded

    def linear_calls(module) -> int:
        with torch.no_grad(), torch.profiler.profile() as profiled:
            SentenceEncoder(module.eval(), "mean", packed=True)(batch)
        return sum(event.count for event in profiled.key_averages() if event.key == "aten::addmm")

    layers = model.config.num_hidden_layers
    pooler = 1  # the checkpoint's pooler runs in the forward (frozen; our pooling makes the embeddings)
    assert linear_calls(model) == 4 * layers + pooler and linear_calls(unfused(model)) == 6 * layers + pooler
    partitioned = unfused(model)
    fuse_qkv(partitioned)
    partitioned.encoder.layer[0].attention.self.key.weight.ds_id = 7  # how DeepSpeed ZeRO-3 marks its weights
    assert linear_calls(partitioned) == 4 * layers + pooler + 2  # that layer runs the three modules


def test_moe_encoders_fuse_once_and_give_berts_attention_output(tokenizer):
    moe = build_tiny_moe(len(tokenizer))
    assert fuse_qkv(moe) == moe.config.num_hidden_layers and fuse_qkv(moe) == 0  # already fused: nothing to do
    attention = moe.encoder.layer[0].attention.self
    hidden = torch.randn(1, 5, moe.config.hidden_size)
    fused_output, _ = attention(hidden)
    attention.__class__ = BertSelfAttention
    plain_output, _ = attention(hidden)
    assert torch.allclose(fused_output, plain_output, atol=1e-6)
