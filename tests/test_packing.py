"""Padding-free (packed) forward: the same embeddings and gradients as padded batches, on real SNLI batches."""

import bisect
import itertools
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel, BertConfig

from ese_trainer.data.collator import RowCollator
from ese_trainer.evaluation.sts import encode
from ese_trainer.modeling import build_moe
from ese_trainer.modeling.encoding import SentenceEncoder
from ese_trainer.modeling.packing import (
    EVAL_PACKING_MIN_PADDING,
    LAYOUT_KEY,
    attention_layout,
    eval_packing,
    length_groups,
    pack,
    packed_sdpa_attention,
    packing_pays_off,
    padding_share,
    use_packing,
)
from ese_trainer.modeling.pooling import POOLING_MODES

from .conftest import REPO, snli_rows


@pytest.fixture(scope="module")
def snli_batch(tokenizer):
    rows = snli_rows(12, seed=1)
    return RowCollator(tokenizer, 128)([rows[i] for i in range(12)])


def load(minilm_path: str, kind: str):
    torch.manual_seed(0)  # the routers' initialisation
    if kind == "dense":
        return AutoModel.from_pretrained(minilm_path).eval()
    return build_moe(minilm_path, moe_type=kind, num_experts=4, num_experts_per_tok=2).eval()


def test_pack_restarts_positions_per_text(tokenizer):
    features = tokenizer(["A dog runs.", "Two men play chess in a park."], padding=True, return_tensors="pt")
    batch = pack(dict(features))
    lengths = features["attention_mask"].sum(1).tolist()
    assert batch.inputs["input_ids"].shape == (1, sum(lengths))
    assert batch.inputs["position_ids"][0].tolist() == list(range(lengths[0])) + list(range(lengths[1]))
    assert batch.inputs["cu_seq_lens_q"].tolist() == [0, lengths[0], sum(lengths)]
    assert batch.inputs["max_length_q"] == max(lengths)
    assert batch.segments.tolist() == [0] * lengths[0] + [1] * lengths[1]


def test_length_groups_minimise_the_padded_score_grid(tokenizer):
    """On real SNLI lengths, the dynamic programme's groups have the smallest ``sum count x bound^2`` of every choice
    of at most 4 bounds among the distinct lengths."""
    rows = snli_rows(40, seed=2)
    texts = [text for row in rows for text in (row["anchor"], *row["texts"])]
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]

    def grid(bounds: list[int], batch: list[int]) -> int:
        return sum(bounds[bisect.bisect_left(bounds, length)] ** 2 for length in batch)

    for start, size in ((0, 6), (10, 20), (30, 45), (0, len(lengths))):
        batch = lengths[start:start + size]
        distinct = sorted(set(batch))
        best = min(grid([*cuts, distinct[-1]], batch) for count in range(4)
                   for cuts in itertools.combinations(distinct[:-1], count))
        bounds = length_groups(batch, 4)
        assert len(bounds) <= 4 and bounds[-1] == max(batch) and grid(bounds, batch) == best
    assert length_groups([5, 9, 5, 7], 4) == [5, 7, 9] and length_groups([8, 3, 8], 1) == [8]


def test_grouped_attention_equals_one_padded_group(minilm, snli_batch):
    """Attention over 4 length groups gives the outputs and gradients of one group padded to the longest text (the
    previous layout), on the real model's layer-0 queries, keys and values of a real SNLI batch."""
    batch = pack(dict(snli_batch))
    lengths = batch.lengths.tolist()
    grouped, single = attention_layout(lengths, batch.lengths.device), attention_layout(lengths, "cpu", max_groups=1)
    assert len(grouped.shapes) == 4 and single.shapes == ((len(lengths), max(lengths)),)
    assert sum(length ** 2 for length in lengths) <= grouped.score_grid < single.score_grid / 2
    assert batch.inputs[LAYOUT_KEY].shapes == grouped.shapes  # pack() hands every layer this layout
    attention = minilm.encoder.layer[0].attention.self
    with torch.no_grad():
        hidden = minilm.embeddings(input_ids=batch.inputs["input_ids"], position_ids=batch.inputs["position_ids"],
                                   token_type_ids=batch.inputs["token_type_ids"])
        heads = [projection(hidden).view(1, -1, 12, 32).transpose(1, 2)
                 for projection in (attention.query, attention.key, attention.value)]
    weights = torch.randn(hidden.shape[1], 12, 32, generator=torch.Generator().manual_seed(0))
    results = []
    for layout in (grouped, single):
        q, k, v = (x.clone().requires_grad_() for x in heads)
        output, _ = packed_sdpa_attention(attention, q, k, v, None, scaling=attention.scaling,
                                          cu_seq_lens_q=batch.inputs["cu_seq_lens_q"], packed_attention_layout=layout)
        (output[0] * weights).sum().backward()
        results.append((output, q.grad, k.grad, v.grad))
    for grouped_result, single_result in zip(*results):  # output, then the gradients of q, k, v: float rounding
        assert (grouped_result - single_result).abs().max() <= 1e-5 * single_result.abs().max()


@pytest.mark.parametrize("kind", ["dense", "upcycled", "residual"])
def test_packed_embeddings_equal_padded_for_every_pooling_and_layer(minilm_path, snli_batch, kind):
    model = load(minilm_path, kind)
    with torch.no_grad():
        for pooling in POOLING_MODES:
            padded = SentenceEncoder(model, pooling, 1, pooled_layers=[1, 3, 5])(snli_batch)
            packed = SentenceEncoder(model, pooling, 1, pooled_layers=[1, 3, 5], packed=True)(snli_batch)
            assert (padded.embeddings - packed.embeddings).abs().max() < 1e-5, pooling
            for layer in (1, 3, 5):
                assert (padded.layer_embeddings[layer] - packed.layer_embeddings[layer]).abs().max() < 1e-5
            if kind != "dense":  # every real token routed, the same way
                for a, b in zip(padded.router_logits, packed.router_logits):
                    assert a.shape == b.shape == (int(snli_batch["attention_mask"].sum()), 4)
                    assert (a.sort(0).values - b.sort(0).values).abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["dense", "upcycled"])
def test_packed_gradients_equal_padded(minilm_path, snli_batch, kind):
    gradients = []
    for packed in (False, True):
        model = load(minilm_path, kind)
        encoded = SentenceEncoder(model, "mean", 1, pooled_layers=[3], packed=packed)(snli_batch)
        loss = encoded.embeddings.pow(2).sum() + encoded.layer_embeddings[3][:, :8].sum()
        if encoded.router_logits is not None:
            loss = loss + sum(logits.logsumexp(-1).pow(2).mean() for logits in encoded.router_logits)
        loss.backward()
        gradients.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    padded, packed = gradients
    assert padded.keys() == packed.keys()
    largest = max(grad.norm() for grad in padded.values())
    for name, grad in padded.items():
        # relative to the parameter's own gradient, or to the largest one where the true gradient is ~0
        # (a key bias shifts every score of a query equally: softmax ignores it)
        scale = max(grad.norm(), 1e-3 * largest)
        assert (grad - packed[name]).norm() / scale < 1e-4, name


def test_packed_suite_encoding_equals_padded(minilm, tokenizer):
    sentences = ["A man is playing a guitar.", "A woman slices an onion.", "Kids play.", "It rains hard tonight."]
    padded = encode(minilm, tokenizer, sentences, "mean", show_progress=False, packed=False)
    packed = encode(minilm, tokenizer, sentences, "mean", show_progress=False, packed=True)
    assert (padded - packed).abs().max() < 1e-5


def test_packing_setting():
    bert = BertConfig()
    assert use_packing("auto", bert) and use_packing(None, bert) and not use_packing("false", bert)
    roberta = BertConfig()
    roberta.model_type = "roberta"  # positions offset by the padding index: not packed unless asked, then refused
    assert not use_packing("auto", roberta)
    with pytest.raises(ValueError, match="packed: true needs a model of type"):
        use_packing("true", roberta)


def test_evaluation_packs_a_batch_only_when_its_padding_pays(tokenizer):
    even = tokenizer(["A dog runs.", "A cat eats.", "A man sings."], padding=True, return_tensors="pt")
    mixed = tokenizer(["A dog.", "Two men in red shirts play chess in a park near the old harbour at dusk, while a "
                       "crowd of tourists watches them and a street band plays old songs behind the benches."],
                      padding=True, return_tensors="pt")
    assert padding_share(even["attention_mask"]) == 0.0
    assert padding_share(mixed["attention_mask"]) > EVAL_PACKING_MIN_PADDING[torch.bfloat16]
    assert not packing_pays_off(even["attention_mask"], torch.float32)
    assert packing_pays_off(mixed["attention_mask"], torch.float32)
    assert packing_pays_off(mixed["attention_mask"], torch.bfloat16)
    # between the two thresholds: worth packing in float32, not in bf16 (cheap matmuls, same scatter/gather)
    share = (EVAL_PACKING_MIN_PADDING[torch.float32] + EVAL_PACKING_MIN_PADDING[torch.bfloat16]) / 2
    mask = torch.ones(10, 10, dtype=torch.long)
    mask[:, 10 - round(share * 10):] = 0
    mask[:, 0] = 1
    assert packing_pays_off(mask, torch.float32) and not packing_pays_off(mask, torch.bfloat16)
    bert = BertConfig()
    assert eval_packing("auto", bert) is None and eval_packing("true", bert) is True
    assert eval_packing("false", bert) is False


def test_auto_suite_encoding_packs_some_batches_and_equals_padded(minilm, tokenizer):
    sentences = ["Kids play.", "A man is playing a guitar on a stage in front of a cheering crowd tonight.",
                 "Rain.", "A woman slices an onion.", "A dog.", "It rains hard tonight over the old town."]
    # the batches of two that encode() forms (length-sorted): some pay for packing, some do not
    lengths = sorted((len(ids) for ids in tokenizer(sentences)["input_ids"]), reverse=True)
    shares = [1 - sum(pair) / (2 * max(pair)) for pair in zip(lengths[::2], lengths[1::2])]
    assert min(shares) < EVAL_PACKING_MIN_PADDING[torch.float32] <= max(shares)
    auto = encode(minilm, tokenizer, sentences, "mean", batch_size=2, show_progress=False)
    padded = encode(minilm, tokenizer, sentences, "mean", batch_size=2, show_progress=False, packed=False)
    assert (auto - padded).abs().max() < 1e-5


def test_gpu_throughput_script_runs_its_contenders_and_refuses_without_a_gpu(tmp_path, tokenizer):
    """Not a timing assertion: the GPU benchmark's Python runs end to end on CPU at a small size, with the tokenizer
    from a folder (as the GPU image gets it: no Hub there), and writes its record; its shell entry point stops with a
    clear message where no CUDA GPU is visible."""
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    result = subprocess.run([sys.executable, "-m", "bench.gpu_throughput", "--device", "cpu", "--small", "--steps", "1",
                             "--batch", "8", "--warmup", "0", "--repeats", "1", "--output_dir", str(tmp_path),
                             "--tokenizer", str(tmp_path / "tokenizer")],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "gpu_throughput.json").read_text())
    assert set(record["real_tokens_per_second"]) == {"ours, packed", "ours, padded", "sentence-transformers"}
    assert record["attention"]["ours, packed"] == "packed_sdpa" and record["real_tokens"] > 8 * 2 * 5
    assert record["st_padding_free"] is False  # sentence-transformers' own flattening needs flash attention
    if not torch.cuda.is_available():
        refused = subprocess.run(["bash", "bench/gpu_throughput.sh"], cwd=REPO, capture_output=True, text=True,
                                 env={**os.environ, "PYTHON": sys.executable})
        assert refused.returncode == 2 and "sees no CUDA GPU" in refused.stderr
