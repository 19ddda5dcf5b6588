"""STS evaluation agrees with sentence-transformers' evaluator and reproduces the published anchor."""

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

from ese_trainer.data import load_sts_pairs
from ese_trainer.evaluation.sts import cosine_spearman, encode, evaluate_sts
from ese_trainer.evaluation.tables import markdown_table

from .conftest import EMBEDDED_DATA


@pytest.fixture(scope="module")
def stsb_test():
    return load_sts_pairs(str(EMBEDDED_DATA / "STS" / "STSBenchmark" / "sts-test.csv"), name="STSBenchmark")


def test_stsb_test_reproduces_published_minilm_score(minilm, tokenizer, stsb_test):
    """MTEB lists all-MiniLM-L6-v2 at 82.03 cosine Spearman on STS-B test."""
    score = evaluate_sts(minilm, tokenizer, {"STSBenchmark": stsb_test}, "mean", show_progress=False)
    assert round(score["STSBenchmark"], 2) == 82.03


def test_agrees_with_embedding_similarity_evaluator(minilm, tokenizer, minilm_path, stsb_test):
    subset = type(stsb_test)("sub", stsb_test.sentences1[:400], stsb_test.sentences2[:400], stsb_test.scores[:400])
    ours = evaluate_sts(minilm, tokenizer, {"sub": subset}, "mean", show_progress=False)["sub"]
    evaluator = EmbeddingSimilarityEvaluator(subset.sentences1, subset.sentences2, subset.scores, name="sub",
                                             similarity_fn_names=["cosine"])
    st_model = SentenceTransformer(minilm_path, device="cpu")
    theirs = evaluator(st_model)["sub_spearman_cosine"]
    # End to end (our encoder and metric vs. theirs), in the evaluator's [0, 1] units.
    assert abs(ours / 100 - theirs) < 1e-4
    # The metric alone, on the evaluator's own embeddings, is exact.
    st_embeddings = [st_model.encode(side, convert_to_tensor=True) for side in (subset.sentences1, subset.sentences2)]
    assert abs(cosine_spearman(*st_embeddings, subset.scores) / 100 - theirs) < 1e-9


def test_bf16_evaluation_stays_within_a_hundredth_and_leaves_the_model_alone(minilm, tokenizer, stsb_test):
    subset = type(stsb_test)("sub", stsb_test.sentences1[:300], stsb_test.sentences2[:300], stsb_test.scores[:300])
    before = {name: weight.clone() for name, weight in minilm.state_dict().items()}
    full = evaluate_sts(minilm, tokenizer, {"sub": subset}, "mean", show_progress=False)["sub"]
    half = evaluate_sts(minilm, tokenizer, {"sub": subset}, "mean", show_progress=False, bf16=True)["sub"]
    assert full != half and abs(full - half) < 0.05  # Spearman x100: a bf16 forward, not the float32 one
    assert all(weight.dtype == torch.float32 and torch.equal(weight, before[name])
               for name, weight in minilm.state_dict().items())


def test_encode_keeps_order_and_deduplicates(minilm, tokenizer):
    sentences = ["b is longer than a", "a", "b is longer than a", "c"]
    embeddings = encode(minilm, tokenizer, sentences, "mean", show_progress=False)
    assert embeddings.shape == (4, 384)
    assert (embeddings[0] == embeddings[2]).all() and not (embeddings[0] == embeddings[1]).all()
    alone = encode(minilm, tokenizer, ["a"], "mean", show_progress=False)
    assert (alone[0] - embeddings[1]).abs().max() < 1e-5


def test_a_suite_encodes_the_sentences_its_tasks_share_once_and_scores_each_task_as_alone(minilm, tokenizer,
                                                                                          stsb_test):
    """Two tasks cut from STS-B test that share 40 pairs: every distinct sentence goes through the model once, and
    each task's score is the one it gets evaluated alone."""
    def cut(name, start, stop):
        return type(stsb_test)(name, stsb_test.sentences1[start:stop], stsb_test.sentences2[start:stop],
                               stsb_test.scores[start:stop])

    tasks = {"first": cut("first", 0, 120), "second": cut("second", 80, 200)}
    distinct = {s for pairs in tasks.values() for s in (*pairs.sentences1, *pairs.sentences2)}
    encoded = []
    hook = minilm.embeddings.register_forward_hook(
        lambda module, args, kwargs, output: encoded.append(int(output.shape[0])), with_kwargs=True)
    try:
        together = evaluate_sts(minilm, tokenizer, tasks, "mean", show_progress=False, packed=False)
    finally:
        hook.remove()
    assert sum(encoded) == len(distinct) < sum(2 * len(pairs) for pairs in tasks.values())
    for name, pairs in tasks.items():
        alone = evaluate_sts(minilm, tokenizer, {name: pairs}, "mean", show_progress=False)[name]
        assert abs(together[name] - alone) < 1e-3
    assert together["avg"] == pytest.approx((together["first"] + together["second"]) / 2)


def test_average_and_table():
    table = markdown_table({"before": {"STS12": 70.0, "avg": 70.0}, "after": {"STS12": 71.234, "avg": 71.234}})
    assert table.splitlines()[0] == "| model | STS12 | avg |"
    assert table.splitlines()[3] == "| after | 71.23 | 71.23 |"
