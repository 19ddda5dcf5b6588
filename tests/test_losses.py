"""The losses agree with sentence-transformers' on the same tensors and behave as their formulas say."""

import pytest
import torch
from sentence_transformers.sentence_transformer.losses import AnglELoss, CoSENTLoss, MultipleNegativesRankingLoss

from ese_trainer.losses import angle_loss, angle_similarity, cosent_loss, in_batch_negative_loss


class _NoModel(torch.nn.Module):
    """ST losses want a model at construction; ``compute_loss_from_embeddings`` never calls it."""


@pytest.fixture
def pairs():
    generator = torch.Generator().manual_seed(0)
    emb_a = torch.randn(16, 24, generator=generator)
    emb_b = emb_a + 0.8 * torch.randn(16, 24, generator=generator)
    scores = torch.tensor([1.0, 0.5, 0.0, 1.0] * 4)
    return emb_a, emb_b, scores


@pytest.mark.parametrize("scale", [20.0, 7.5])
def test_cosent_loss_equals_st_cosent(pairs, scale):
    emb_a, emb_b, scores = pairs
    expected = CoSENTLoss(_NoModel(), scale=scale).compute_loss_from_embeddings([emb_a, emb_b], scores)
    assert torch.allclose(cosent_loss(emb_a, emb_b, scores, scale), expected, atol=1e-5)


@pytest.mark.parametrize("dim", [24, 25])
def test_angle_loss_equals_st_angle(pairs, dim):
    emb_a, emb_b, scores = pairs
    emb_a = torch.nn.functional.pad(emb_a, (0, dim - 24), value=0.3)
    emb_b = torch.nn.functional.pad(emb_b, (0, dim - 24))
    expected = AnglELoss(_NoModel(), scale=20.0).compute_loss_from_embeddings([emb_a, emb_b], scores)
    assert torch.allclose(angle_loss(emb_a, emb_b, scores), expected, atol=1e-5)


def test_angle_similarity_is_complex_division_angle():
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 8, generator=generator), torch.randn(5, 8, generator=generator)
    a_n, b_n = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    z_a = torch.complex(a_n[:, :4], a_n[:, 4:])
    z_b = torch.complex(b_n[:, :4], b_n[:, 4:])
    # Re and Im of sum(z_a * conj(z_b)): the cosine and the sine of AnglE.
    product = (z_a * z_b.conj()).sum(dim=-1)
    assert torch.allclose(angle_similarity(a, b), (product.real + product.imag).abs(), atol=1e-6)


def test_ibn_equals_symmetric_st_mnrl_when_all_pairs_positive(pairs):
    emb_a, emb_b, _ = pairs
    scores = torch.ones(emb_a.shape[0])
    mnrl = MultipleNegativesRankingLoss(_NoModel(), scale=20.0, directions=("query_to_doc", "query_to_query"))
    expected = (mnrl.compute_loss_from_embeddings([emb_a, emb_b], scores)
                + mnrl.compute_loss_from_embeddings([emb_b, emb_a], scores)) / 2
    assert torch.allclose(in_batch_negative_loss(emb_a, emb_b, scores), expected, atol=1e-5)


def test_ibn_non_positive_pairs_are_only_negatives(pairs):
    emb_a, emb_b, scores = pairs
    positives = scores >= 1.0
    texts = torch.nn.functional.normalize(torch.cat([emb_a, emb_b]), dim=-1)
    logits = 20 * texts @ texts.T
    logits.fill_diagonal_(float("-inf"))
    batch = emb_a.shape[0]
    rows = torch.nonzero(positives).flatten()
    manual = torch.cat([
        -torch.log_softmax(logits[rows], dim=-1)[torch.arange(len(rows)), rows + batch],
        -torch.log_softmax(logits[rows + batch], dim=-1)[torch.arange(len(rows)), rows],
    ]).mean()
    assert torch.allclose(in_batch_negative_loss(emb_a, emb_b, scores), manual, atol=1e-5)
    # Moving a neutral pair's second text changes the loss (it is a negative) ...
    moved = emb_b.clone()
    moved[1] += 5.0
    assert not torch.allclose(in_batch_negative_loss(emb_a, moved, scores), manual)


def test_ibn_without_positives_is_zero_with_gradient():
    emb_a = torch.randn(4, 8, requires_grad=True)
    loss = in_batch_negative_loss(emb_a, torch.randn(4, 8), torch.tensor([0.0, 0.5, 0.5, 0.0]))
    loss.backward()
    assert loss.item() == 0.0 and emb_a.grad is not None


def test_ranking_losses_depend_only_on_score_order(pairs):
    emb_a, emb_b, scores = pairs
    stretched = scores ** 3 * 5  # monotone map of the scores
    assert torch.allclose(cosent_loss(emb_a, emb_b, scores), cosent_loss(emb_a, emb_b, stretched))
    assert torch.allclose(angle_loss(emb_a, emb_b, scores), angle_loss(emb_a, emb_b, stretched))


def test_raw_nli_labels_reverse_the_ranking(pairs):
    """Raw labels (0 entailment, 2 contradiction) as scores make CoSENT reward the opposite order."""
    emb_a, _, _ = pairs
    similar = emb_a + 0.05 * torch.randn_like(emb_a)
    dissimilar = torch.randn_like(emb_a)
    emb_b = torch.cat([similar[:8], dissimilar[8:]])
    mapped = torch.cat([torch.ones(8), torch.zeros(8)])  # entailment -> 1.0, contradiction -> 0.0
    raw = torch.cat([torch.zeros(8), 2 * torch.ones(8)])  # the same pairs' raw labels
    assert cosent_loss(emb_a, emb_b, mapped) < 1e-3 < 10 < cosent_loss(emb_a, emb_b, raw)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="scores"):
        cosent_loss(torch.randn(4, 8), torch.randn(4, 8), torch.ones(3))
    with pytest.raises(ValueError, match="embeddings"):
        angle_loss(torch.randn(4, 8), torch.randn(4, 6), torch.ones(4))


def test_ibn_leaves_copies_of_anchor_and_positive_out_of_the_softmax(pairs):
    emb_a, emb_b, scores = pairs
    emb_a = emb_a.clone()
    emb_a[1] = emb_a[0]  # pair 1 shares pair 0's premise (as SNLI premises do)
    ids = torch.arange(32)
    ids[1] = ids[0]
    masked = in_batch_negative_loss(emb_a, emb_b, scores, text_ids=ids)
    unmasked = in_batch_negative_loss(emb_a, emb_b, scores)
    assert masked < unmasked  # the copy no longer competes with the positive at cos = 1
    # With distinct ids nothing changes.
    assert torch.allclose(in_batch_negative_loss(emb_a, emb_b, scores, text_ids=torch.arange(32)), unmasked)
    # Pair 0 whose two sides are the same text keeps its positive.
    same = emb_b.clone()
    same[0] = emb_a[0]
    same_ids = torch.arange(32)
    same_ids[16] = same_ids[0]
    assert torch.isfinite(in_batch_negative_loss(emb_a, same, scores, text_ids=same_ids))
