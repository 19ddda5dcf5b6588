"""The losses agree with sentence-transformers' on the same tensors and behave as their formulas say."""

import pytest
import torch
from sentence_transformers.sentence_transformer.losses import AnglELoss, CoSENTLoss

from ese_trainer.losses import angle_loss, angle_similarity, cosent_loss


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


def test_ranking_losses_depend_only_on_score_order(pairs):
    emb_a, emb_b, scores = pairs
    stretched = scores ** 3 * 5  # monotone map of the scores
    assert torch.allclose(cosent_loss(emb_a, emb_b, scores), cosent_loss(emb_a, emb_b, stretched))
    assert torch.allclose(angle_loss(emb_a, emb_b, scores), angle_loss(emb_a, emb_b, stretched))


def test_raw_nli_labels_reverse_the_ranking(pairs):
    """Raw labels (0 entailment, 2 contradiction) as scores make CoSENT reward the opposite order."""
    emb_a, _, _ = pairs
    generator = torch.Generator().manual_seed(2)  # not the global stream: the result must not depend on test order
    similar = emb_a + 0.05 * torch.randn(emb_a.shape, generator=generator)
    dissimilar = torch.randn(emb_a.shape, generator=generator)
    emb_b = torch.cat([similar[:8], dissimilar[8:]])
    mapped = torch.cat([torch.ones(8), torch.zeros(8)])  # entailment -> 1.0, contradiction -> 0.0
    raw = torch.cat([torch.zeros(8), 2 * torch.ones(8)])  # the same pairs' raw labels
    assert cosent_loss(emb_a, emb_b, mapped) < 1e-3 < 10 < cosent_loss(emb_a, emb_b, raw)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="scores"):
        cosent_loss(torch.randn(4, 8), torch.randn(4, 8), torch.ones(3))
    with pytest.raises(ValueError, match="embeddings"):
        angle_loss(torch.randn(4, 8), torch.randn(4, 6), torch.ones(4))
