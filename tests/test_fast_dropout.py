"""``model.fast_dropout``: dropout masks from 16-bit slices of 64-bit draws, on the real all-MiniLM-L6-v2 and real
SNLI rows: the rate and expectation of ``nn.Dropout``, the seed's reproducibility, and packed attention that equals
SDPA's without dropout and is unbiased with it."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainingArguments

from ese_trainer.config.parsing import parse_config
from ese_trainer.data.collator import RowCollator
from ese_trainer.modeling.arguments import ModelArguments, MoEArguments
from ese_trainer.modeling.encoding import SentenceEncoder
from ese_trainer.modeling.fast_dropout import FastDropout, fast_dropout, keep_mask, kept_rate
from ese_trainer.modeling.loading import load_tokenizer_and_encoder
from ese_trainer.modeling.packing import fast_dropout_attention, math_attention

from .conftest import snli_rows


def test_masks_keep_at_the_rate_asked_and_kept_values_restore_the_expectation():
    torch.manual_seed(0)
    count = 4_000_003  # not a multiple of 4: the last 64-bit draw is used in part
    for probability in (0.1, 0.5):
        kept = keep_mask((count,), probability).double().mean().item()
        sigma = math.sqrt(probability * (1 - probability) / count)
        assert abs(kept - kept_rate(probability)) < 5 * sigma and abs(kept_rate(probability) - (1 - probability)) < 1e-4
    inputs = torch.randn(1000, 384, requires_grad=True)
    outputs = fast_dropout(inputs, 0.1)
    outputs.backward(torch.ones_like(outputs))
    kept = outputs != 0
    assert torch.allclose(outputs[kept], inputs[kept] / kept_rate(0.1))
    assert torch.equal(inputs.grad, kept.float() / kept_rate(0.1))  # the gradient passes where the value did
    assert abs(outputs.mean().item() - inputs.mean().item()) < 5 * 0.35 / math.sqrt(inputs.numel())
    assert fast_dropout(inputs, 0.1, training=False) is inputs


def test_the_seed_draws_the_same_masks_and_another_seed_others():
    def masks(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return torch.stack([keep_mask((64, 97), 0.1) for _ in range(3)])

    assert torch.equal(masks(7), masks(7)) and not torch.equal(masks(7), masks(8))


@pytest.fixture(scope="module")
def attention_inputs():
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(3, 2, 9, 16, generator=generator) for _ in range(3))
    mask = (torch.arange(9)[None] < torch.tensor([9, 6, 4])[:, None])[:, None, None, :]
    return query, key, value, mask


def test_packed_attention_with_fast_dropout_is_sdpa_with_the_probabilities_masked(attention_inputs):
    """At a rate that rounds to 0 every probability is kept: SDPA's output and gradients; at 0.3 the mean over
    draws converges to SDPA's output without dropout (inverted dropout is unbiased)."""
    query, key, value, mask = (tensor.clone().requires_grad_(tensor.dtype != torch.bool) for tensor in attention_inputs)
    ours = fast_dropout_attention(query, key, value, attn_mask=mask, dropout_p=1e-7, scale=0.25)
    sdpa = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=0.25)
    assert torch.allclose(ours, sdpa, atol=1e-6)
    ours_grads = torch.autograd.grad(ours.square().sum(), (query, key, value))
    sdpa_grads = torch.autograd.grad(sdpa.square().sum(), (query, key, value))
    for mine, theirs in zip(ours_grads, sdpa_grads):
        assert torch.allclose(mine, theirs, atol=1e-5)
    torch.manual_seed(1)
    with torch.no_grad():
        draws = torch.stack([fast_dropout_attention(query, key, value, attn_mask=mask, dropout_p=0.3, scale=0.25)
                             for _ in range(2000)])
    assert not torch.allclose(draws[0], sdpa)
    assert (draws.mean(0) - sdpa).abs().max() < 6 * draws.std(0).max() / math.sqrt(len(draws))


def test_the_option_swaps_every_dropout_of_the_encoder_and_the_training_forward_uses_it(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("output_dir: x\nfast_dropout: true\n")
    model_args, _ = parse_config(["--config", str(path)], (ModelArguments, TrainingArguments))
    tokenizer, model = load_tokenizer_and_encoder(model_args, MoEArguments())
    _, plain = load_tokenizer_and_encoder(ModelArguments(), MoEArguments())
    ours = [module for module in model.modules() if isinstance(module, nn.Dropout)]
    theirs = [module for module in plain.modules() if isinstance(module, nn.Dropout)]
    assert len(ours) == len(theirs) == 1 + 3 * model.config.num_hidden_layers  # embeddings; attention, its output, FFN
    assert all(type(module) is FastDropout for module in ours) and [m.p for m in ours] == [m.p for m in theirs]
    assert model.state_dict().keys() == plain.state_dict().keys()
    rows = snli_rows(6, seed=3)
    batch = RowCollator(tokenizer, 128)([rows[i] for i in range(6)])
    encoder = SentenceEncoder(model.train(), "mean", packed=True)

    def embeddings(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return encoder(batch).embeddings

    def operators(module: nn.Module) -> set[str]:
        with torch.profiler.profile() as profiled:
            SentenceEncoder(module.train(), "mean", packed=True)(batch)
        return {event.key for event in profiled.key_averages()}

    drawn, native = operators(model), operators(plain)
    assert "aten::random_" in drawn and not {name for name in drawn if "bernoulli" in name or "dropout" in name}
    assert "aten::bernoulli_" in native and "aten::random_" not in native
    first = embeddings(0)
    first.sum().backward()
    assert torch.equal(first, embeddings(0)) and not torch.allclose(first, embeddings(1))
    assert model.encoder.layer[0].attention.self.query.weight.grad is not None
    model.eval()
    assert torch.allclose(encoder(batch).embeddings, SentenceEncoder(plain.eval(), "mean", packed=True)(batch)
                          .embeddings, atol=1e-5)


def test_bf16_math_attention_draws_sdpas_masks_and_the_packed_bf16_forward_takes_it(attention_inputs):
    """With the same seed, bf16 math attention drops the very probabilities SDPA drops (its output within bf16
    rounding of SDPA's, which computes in float32; another draw is far off); bf16 training on CPU runs it, float32
    keeps SDPA."""
    query, key, value, mask = (tensor.to(torch.bfloat16) if tensor.dtype != torch.bool else tensor
                               for tensor in attention_inputs)
    torch.manual_seed(3)
    sdpa = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.3, scale=0.25).float()
    torch.manual_seed(3)
    ours = math_attention(query, key, value, attn_mask=mask, dropout_p=0.3, scale=0.25).float()
    other = math_attention(query, key, value, attn_mask=mask, dropout_p=0.3, scale=0.25).float()
    assert (ours - sdpa).abs().max() < 0.05 * sdpa.abs().max() < (other - sdpa).abs().max()
    rows = snli_rows(6, seed=3)
    tokenizer, model = load_tokenizer_and_encoder(ModelArguments(), MoEArguments())
    batch = RowCollator(tokenizer, 128)(rows)
    encoder = SentenceEncoder(model.train(), "mean", packed=True)

    def sdpa_calls(bf16: bool) -> int:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.profiler.profile() as profiled:
            encoder(batch)
        return sum(event.count for event in profiled.key_averages()
                   if event.key == "aten::scaled_dot_product_attention")

    assert sdpa_calls(bf16=True) == 0 < sdpa_calls(bf16=False)
