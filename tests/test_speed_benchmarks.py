"""What the speed benchmarks compare: sentence-transformers on the same texts computes our loss, and the compute floor
counts the step's GEMMs (real all-MiniLM-L6-v2, real SNLI rows; nothing here is timed)."""

import pytest
import torch
from sentence_transformers import SentenceTransformer

from bench.step_floor import gemm_floor, paired_ratio
from bench.train_throughput import ST_CANDIDATE_COLUMNS, STLoss, load_rows, our_parts, row_columns
from ese_trainer.data.collator import RowCollator
from ese_trainer.training.training_model import TrainingModel


@pytest.fixture(scope="module")
def batch_rows():
    rows, sampler = load_rows(1, 8)
    return rows, next(iter(sampler))


def test_sentence_transformers_on_the_same_texts_encodes_them_once_and_computes_our_loss(minilm_path, batch_rows):
    """Its columns hold exactly the texts ours encodes, once each; without dropout its loss (CoSENT + 10 x MNRL +
    AnglE from sentence-transformers' classes) equals our objective's on the same batch."""
    rows, batch = batch_rows
    tokenizer, encoder, objective = our_parts(packed=True)
    inputs = RowCollator(tokenizer, 128)([rows[i] for i in batch])
    with torch.no_grad():
        ours = TrainingModel(encoder, objective).eval()(**inputs).loss
    columns = row_columns(rows.select(batch))
    ours_texts = [text for i in batch for text in (rows[i]["anchor"], *rows[i]["texts"])]
    st_texts = [text for name in ("anchor", *ST_CANDIDATE_COLUMNS) for text in columns[name]]
    assert sorted(st_texts) == sorted(ours_texts) and len(set(st_texts)) == len(st_texts)
    model = SentenceTransformer(minilm_path, device="cpu").eval()
    features = [model.preprocess(columns[name]) for name in ("anchor", *ST_CANDIDATE_COLUMNS)]
    with torch.no_grad():
        theirs = STLoss(model, same_texts=True)(features, torch.tensor(columns["score"]))
    assert float(theirs) == pytest.approx(float(ours), rel=1e-5)


def test_the_gemm_floor_counts_six_flops_per_weight_and_token_plus_attention(minilm):
    """Forward and backward, the linear GEMMs do 6 FLOPs per weight and token (2 forward, 4 backward); attention's
    score and context products 4 L^2 d per head and text forward, three times that with backward."""
    config = minilm.config
    batches = [[12, 7, 30, 9], [15, 15, 4]]
    tokens = sum(map(sum, batches))
    hidden, inner = config.hidden_size, config.intermediate_size
    weights = config.num_hidden_layers * (4 * hidden ** 2 + 2 * hidden * inner)
    attention = config.num_hidden_layers * sum(4 * length ** 2 * config.hidden_size for batch in batches
                                               for length in batch)
    for backward, factor in ((True, 3), (False, 1)):
        floors = {fused: gemm_floor(config, batches, bf16=False, backward=backward, repeats=1, fused_qkv=fused)
                  for fused in (True, False)}
        for floor in floors.values():
            assert floor["flops"]["attention"] == attention * factor
            assert floor["total_flops"] - floor["flops"]["attention"] == 2 * factor * weights * tokens
            assert floor["total_seconds"] == pytest.approx(sum(floor["flops"][kind] / floor["flops_per_second"][kind]
                                                               for kind in floor["flops"]))
        # the one Q, K, V projection (the recipe's) and BERT's three do the same work, each 3 x the output's
        assert floors[True]["flops"]["qkv"] == floors[False]["flops"]["q, k, v"] == 3 * floors[True]["flops"][
            "attention output"]


def test_ratios_keep_their_run_to_run_spread():
    assert paired_ratio([10.0, 12.0, 9.0], [5.0, 4.0, 4.5]) == {"median": 2.0, "min": 2.0, "max": 3.0, "repeats": 3}
