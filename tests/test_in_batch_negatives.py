"""The in-batch term over grouped rows equals sentence-transformers' MNRL and GISTEmbedLoss (the installed library),
its options do what they say, and the combined loss reads the row layout as the collator writes it."""

import math

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import GISTEmbedLoss, MultipleNegativesRankingLoss
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

from ese_trainer.data.collator import RowCollator
from ese_trainer.data.rows import NEGATIVE, POSITIVE, SCORED
from ese_trainer.losses import (
    CombinedLoss,
    InBatchCandidates,
    InBatchSettings,
    LossSettings,
    RowBatch,
    angle_loss,
    cosent_loss,
    hardest_negative_hinge_loss,
    in_batch_negatives_loss,
)

from .conftest import build_tiny_bert

ALL_DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")


class _NoModel(torch.nn.Module):
    """ST losses want a model at construction; ``compute_loss_from_embeddings`` never calls it."""


def columns(rows=8, dim=16, negatives=2, seed=0):
    """Anchor, positive and k negative columns, and our layout of them: documents = positives then each negative
    column (sentence-transformers' order), each document's row, each row's positive."""
    generator = torch.Generator().manual_seed(seed)
    anchors = torch.randn(rows, dim, generator=generator)
    positives = anchors + 0.7 * torch.randn(rows, dim, generator=generator)
    negative_columns = [anchors + 1.2 * torch.randn(rows, dim, generator=generator) for _ in range(negatives)]
    docs = torch.cat([positives, *negative_columns])
    return anchors, positives, negative_columns, docs, torch.arange(rows).repeat(negatives + 1), torch.arange(rows)


@pytest.mark.parametrize("directions,partition", [
    (("query_to_doc",), "joint"), (("query_to_doc", "query_to_query"), "joint"),
    (("query_to_doc", "doc_to_query"), "per_direction"), (("query_to_doc", "doc_to_query"), "joint"),
    (ALL_DIRECTIONS, "joint"),
])
@pytest.mark.parametrize("hardness,strength", [(None, 0.0), ("hard_negatives", 5.0), ("in_batch_negatives", 9.0),
                                               ("all_negatives", 3.0)])
def test_equals_sentence_transformers_mnrl(directions, partition, hardness, strength):
    anchors, positives, negatives, docs, doc_row, positive = columns()
    mnrl = MultipleNegativesRankingLoss(_NoModel(), scale=20.0, directions=directions, partition_mode=partition,
                                        hardness_mode=hardness, hardness_strength=strength)
    expected = mnrl.compute_loss_from_embeddings([anchors, positives, *negatives], None)
    settings = InBatchSettings(20.0, directions, partition, hardness or "none", strength)
    assert in_batch_negatives_loss(InBatchCandidates(anchors, docs, doc_row, positive), settings) == pytest.approx(
        expected.item(), abs=1e-5)


@pytest.fixture(scope="module")
def st_models(tmp_path_factory, tokenizer):
    """A tiny sentence-transformers model to train and another one as its guide (random weights, real tokenizer)."""
    def build(seed):
        folder = tmp_path_factory.mktemp(f"tiny{seed}")
        build_tiny_bert(len(tokenizer), seed).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        transformer = Transformer(str(folder))
        return SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")],
                                   device="cpu")
    return build(0), build(1)


ANCHORS = ["A man plays a guitar.", "Two dogs run in a field.", "A woman is cooking.", "Kids are at school.",
           "A cat sleeps on a sofa.", "The sky is blue today."]
POSITIVES = ["A person plays music.", "Dogs are running outside.", "Someone makes food.", "Children learn in class.",
             "An animal is resting.", "It is a clear day."]
NEGATIVES = ["Nobody plays anything.", "The dogs are asleep.", "The woman is swimming.", "The school is empty.",
             "A dog barks loudly.", "It is raining hard."]


@pytest.mark.parametrize("texts,contrast_anchors,contrast_positives", [
    ((ANCHORS, POSITIVES), True, True),  # pairs: GIST's positive-positive block is our doc_to_doc
    ((ANCHORS, POSITIVES, NEGATIVES), True, False),
    ((ANCHORS, POSITIVES, NEGATIVES), False, False),
])
def test_with_a_guide_equals_sentence_transformers_gistembed(st_models, texts, contrast_anchors, contrast_positives):
    model, guide = st_models
    loss = GISTEmbedLoss(model, guide, contrast_anchors=contrast_anchors, contrast_positives=contrast_positives)
    expected = loss([model.preprocess(column) for column in texts], None)
    with torch.no_grad():
        embedded = [model(model.preprocess(column))["sentence_embedding"] for column in texts]
        guided = [guide(guide.preprocess(column))["sentence_embedding"] for column in texts]
    rows = len(ANCHORS)
    directions = ("query_to_doc", *(("query_to_query",) if contrast_anchors else ()),
                  *(("doc_to_doc",) if contrast_positives else ()))
    candidates = InBatchCandidates(embedded[0], torch.cat(embedded[1:]), torch.arange(rows).repeat(len(texts) - 1),
                                   torch.arange(rows), guide=(guided[0], torch.cat(guided[1:])))
    ours = in_batch_negatives_loss(candidates, InBatchSettings(scale=100.0, directions=directions))
    assert ours.item() == pytest.approx(expected.item(), abs=1e-5)


def test_the_guide_removes_candidates_it_scores_above_the_positive():
    anchors, _, _, docs, doc_row, positive = columns(rows=4, negatives=1)
    plain = in_batch_negatives_loss(InBatchCandidates(anchors, docs, doc_row, positive))
    # a guide that sees row 0's negative as identical to its anchor: a false negative, out of row 0's softmax
    guide_anchors, guide_docs = anchors.clone(), docs.clone()
    guide_docs[4] = guide_anchors[0]
    guided = in_batch_negatives_loss(InBatchCandidates(anchors, docs, doc_row, positive,
                                                       guide=(guide_anchors, guide_docs)))
    assert guided < plain
    # a guide identical to the model removes only candidates above the positives, never a positive itself
    same = in_batch_negatives_loss(InBatchCandidates(anchors, docs, doc_row, positive, guide=(anchors, docs)))
    assert torch.isfinite(same) and same <= plain + 1e-6


def test_duplicate_texts_leave_the_softmax():
    anchors, _, _, docs, doc_row, positive = columns(rows=6, negatives=1)
    docs = docs.clone()
    docs[7] = anchors[0]  # row 1's negative is row 0's anchor text
    anchor_ids, doc_ids = torch.arange(6), torch.arange(100, 112)
    doc_ids[7] = anchor_ids[0]
    masked = in_batch_negatives_loss(InBatchCandidates(anchors, docs, doc_row, positive, anchor_ids=anchor_ids,
                                                       doc_ids=doc_ids))
    unmasked = in_batch_negatives_loss(InBatchCandidates(anchors, docs, doc_row, positive))
    assert masked < unmasked  # row 0 no longer competes with a copy of itself at cos = 1
    distinct = in_batch_negatives_loss(InBatchCandidates(anchors, docs, doc_row, positive, anchor_ids=torch.arange(6),
                                                         doc_ids=torch.arange(100, 112)))
    assert distinct.item() == pytest.approx(unmasked.item())


def test_rows_without_a_positive_only_add_candidates():
    anchors, _, _, docs, doc_row, positive = columns(rows=6, negatives=1)
    positive = positive.clone()
    positive[5] = -1  # row 5: an anchor and a negative, no positive (a premise without entailment)
    with_candidates = in_batch_negatives_loss(InBatchCandidates(anchors, docs, doc_row, positive))
    manual_logits = 20 * torch.nn.functional.normalize(anchors[:5], dim=-1) @ \
        torch.nn.functional.normalize(docs, dim=-1).T
    expected = -torch.log_softmax(manual_logits, dim=-1)[torch.arange(5), torch.arange(5)].mean()
    assert with_candidates.item() == pytest.approx(expected.item(), abs=1e-5)
    none = torch.full((6,), -1)
    loss = in_batch_negatives_loss(InBatchCandidates(anchors.requires_grad_(), docs, doc_row, none))
    loss.backward()
    assert loss.item() == 0.0 and anchors.grad is not None


def test_hinge_pushes_the_hardest_negative_a_margin_below_the_positive():
    anchors, _, _, docs, doc_row, positive = columns(rows=4, negatives=1)
    cosines = torch.nn.functional.normalize(anchors, dim=-1) @ torch.nn.functional.normalize(docs, dim=-1).T
    rows = torch.arange(4)
    hardest = cosines.masked_fill(torch.nn.functional.one_hot(rows, 8).bool(), -2).max(dim=1).values
    expected = torch.relu(0.2 - cosines[rows, rows] + hardest).mean()
    assert hardest_negative_hinge_loss(InBatchCandidates(anchors, docs, doc_row, positive), margin=0.2).item() == \
        pytest.approx(expected.item(), abs=1e-6)
    separated = torch.eye(8)[:4] * 10, torch.eye(8) * 10
    assert hardest_negative_hinge_loss(InBatchCandidates(separated[0], separated[1][:8], doc_row, positive)).item() \
        == 0.0


@pytest.mark.parametrize("settings,message", [
    (dict(directions=("query_to_query",)), "including query_to_doc"),
    (dict(partition_mode="per_direction", directions=("query_to_doc", "query_to_query")), "per_direction"),
    (dict(hardness_mode="hardest"), "hardness_mode"),
    (dict(guide_margin_strategy="percent"), "guide_margin_strategy"),
])
def test_bad_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        InBatchSettings(**settings)


def test_combined_loss_reads_the_collated_layout(tokenizer):
    """Collated rows → RowBatch: ranking terms over every scored pair, the in-batch term over anchors, positives
    and hard negatives; mined (unscored) negatives are candidates only."""
    rows = [{"anchor": "A man plays a guitar.", "texts": ["A person plays music.", "Nobody plays.", "He is outside."],
             "scores": [1.0, 0.0, 0.5], "roles": [POSITIVE, NEGATIVE, SCORED]},
            {"anchor": "Two dogs run.", "texts": ["Dogs are running.", "A cat naps."], "scores": [1.0, math.nan],
             "roles": [POSITIVE, NEGATIVE]},
            {"anchor": "It rains.", "texts": ["It is sunny."], "scores": [0.0], "roles": [NEGATIVE]}]
    batch = RowCollator(tokenizer)(rows)
    assert batch["input_ids"].shape[0] == 3 + 6
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(9, 16, generator=generator)
    layout = RowBatch(embeddings, batch["other_row"], batch["other_role"], batch["other_score"], batch["text_ids"])
    documents, doc_row, positive = layout.documents()
    assert documents.tolist() == [3, 4, 6, 7, 8] and doc_row.tolist() == [0, 0, 1, 1, 2]
    assert positive.tolist() == [0, 2, -1]
    first, second, scores = layout.scored_pairs()
    assert first.tolist() == [0, 0, 0, 1, 2] and second.tolist() == [3, 4, 5, 6, 8]
    loss = CombinedLoss({"cosent": 1.0, "ibn": 30.0, "angle": 1.0, "hinge": 2.0}, LossSettings(hinge_margin=0.3))
    terms = loss(layout)
    assert terms["loss_cosent"].item() == pytest.approx(
        cosent_loss(embeddings[first], embeddings[second], scores).item())
    assert terms["loss_angle"].item() == pytest.approx(angle_loss(embeddings[first], embeddings[second], scores).item())
    assert terms["loss_ibn"].item() == pytest.approx(in_batch_negatives_loss(InBatchCandidates(
        embeddings[:3], embeddings[documents], doc_row, positive, anchor_ids=batch["text_ids"][:3],
        doc_ids=batch["text_ids"][documents])).item())
    assert terms["loss_hinge"].item() == pytest.approx(hardest_negative_hinge_loss(InBatchCandidates(
        embeddings[:3], embeddings[documents], doc_row, positive), margin=0.3).item())
    assert loss.combine(terms).item() == pytest.approx(
        (terms["loss_cosent"] + 30 * terms["loss_ibn"] + terms["loss_angle"] + 2 * terms["loss_hinge"]).item())
    only_ibn = CombinedLoss({"cosent": 0.0, "ibn": 1.0, "angle": 0.0, "hinge": 0.0})
    assert set(only_ibn(layout)) == {"loss_ibn"}
    with pytest.raises(ValueError, match="nothing to train"):
        CombinedLoss({"cosent": 0.0, "ibn": 0.0, "angle": 0.0, "hinge": 0.0})
