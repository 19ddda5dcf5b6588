"""ESE's Starbucks schedule: the slice list, its terms, the recipe pooling what it trains, the PCA refresh."""

from dataclasses import asdict

import pytest
import torch

from ese_trainer.ese import ESELoss, ESESettings
from ese_trainer.ese.arguments import ESEArguments
from ese_trainer.ese.compression import pca_target
from ese_trainer.ese.distillation import distillation_loss
from ese_trainer.ese.starbucks import STARBUCKS, STARBUCKS_DISTILL, default_diagonal, parse_slices
from ese_trainer.training.fingerprint import ese_fingerprint, fingerprint_changes

from .conftest import snli_rows
from .test_ese_loss import _layers, espresso
from .test_trainer import make_trainer


def _mean_pair_loss(embeddings):
    """A loss that reads every dim it is given (the batch's texts as pairs: first half against second half)."""
    emb_a, emb_b = embeddings.chunk(2)
    return (emb_a * emb_b).sum(dim=1).mean()


def test_default_diagonal_reproduces_starbucks_and_scales_to_smaller_models():
    assert default_diagonal(12, 768) == [(2, 32), (4, 64), (6, 128), (8, 256), (10, 512), (12, 768)]
    assert default_diagonal(6, 384) == [(1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384)]
    assert default_diagonal(3, 384) == [(1, 128), (2, 256), (3, 384)]


@pytest.mark.parametrize("values,pattern", [(["2by32"], "not LAYERxDIMS"), (["7x32"], "outside layers 1..6"),
                                            (["2x32", "2x32"], "repeats a slice")])
def test_bad_slices_are_refused(values, pattern):
    with pytest.raises(ValueError, match=pattern):
        parse_slices(values, 6, 384)
    assert parse_slices(["4x64", "2x32"], 6, 384) == [(2, 32), (4, 64)]


def test_starbucks_terms_are_the_pair_loss_of_every_slice_but_the_full_one():
    layers = _layers(4, dim=16)
    loss = ESELoss(ESESettings(schedule="starbucks", starbucks_pairs=["1x4", "3x8", "4x16"]), 4, 16)
    assert loss.layers == [1, 3, 4] and loss.student_layers == [1, 3] and list(loss.parameters()) == []
    terms = loss(layers, _mean_pair_loss)
    expected = _mean_pair_loss(layers[1][:, :4]) + _mean_pair_loss(layers[3][:, :8])
    assert torch.allclose(terms[STARBUCKS], expected) and torch.allclose(terms["loss_ese"], expected)
    assert STARBUCKS_DISTILL not in terms


def test_starbucks_distillation_toward_each_layers_target():
    layers = _layers(2, dim=16, requires_grad=True)
    loss = ESELoss(ESESettings(schedule="starbucks", starbucks_pairs=["1x4", "2x16"], starbucks_distill_weight=0.5,
                               kl_temperature=2.0), 2, 16)
    terms = loss(layers, _mean_pair_loss)
    stacked = layers[1]
    parts = distillation_loss(stacked[:, :4], pca_target(stacked, 4), 2.0)
    assert torch.allclose(terms[STARBUCKS_DISTILL], parts["mse"] + parts["kl"], atol=1e-6)
    assert torch.allclose(terms["loss_ese"], terms[STARBUCKS] + 0.5 * terms[STARBUCKS_DISTILL])
    terms["loss_ese"].backward()
    assert layers[1].grad[:, 4:].abs().sum() == 0  # only the slice's 4 dims are trained
    assert layers[2].grad is None  # the full slice is the main loss, not an ESE term


def test_pca_projection_reused_between_refreshes():
    loss = ESELoss(espresso(compression_size=4, pca_refresh_steps=3), 3, 16).train()
    calls = []
    original = loss._pca_target

    def counting(layer, embeddings, k):
        cached = getattr(loss, f"pca_projection_{layer}").clone()
        result = original(layer, embeddings, k)
        calls.append(not torch.equal(cached, getattr(loss, f"pca_projection_{layer}")))  # recomputed this step
        return result

    loss._pca_target = counting
    for step in range(6):
        loss(_layers(3, seed=step), _mean_pair_loss)
    refreshed = [any(calls[index * 3:(index + 1) * 3]) for index in range(6)]  # 3 distilled layers a step
    assert refreshed == [True, False, True, False, False, True]  # steps 1 (none yet), 3 and 6
    fresh = ESELoss(espresso(compression_size=4), 3, 16)(_layers(3, seed=9), _mean_pair_loss)
    reused = ESELoss(espresso(compression_size=4, pca_refresh_steps=1), 3, 16)(_layers(3, seed=9), _mean_pair_loss)
    assert torch.allclose(fresh["loss_ese"], reused["loss_ese"])


def test_recipe_pools_the_layers_its_slices_need(tiny_bert, tokenizer, tmp_path):

    dataset = snli_rows(16, seed=3)
    ese = ESEArguments(ese_enabled=True, ese_schedule="starbucks")
    trainer = make_trainer(tiny_bert, tokenizer, dataset, tmp_path, ese_args=ese, max_steps=2)
    assert trainer.model.objective.ese_loss.slices == [(1, 24), (2, 32)]  # tiny BERT: 2 layers x 32
    assert trainer.model.encoder.pooled_layers == [1]
    trainer.train()
    assert {"loss_ese", "loss_ese_starbucks"} <= set(trainer.state.log_history[0])
    with pytest.raises(ValueError, match="starbucks_pairs applies to schedule starbucks only"):
        ESEArguments(ese_enabled=True, ese_schedule="espresso", ese_starbucks_pairs=["1x8"])


def test_starbucks_is_the_default_and_espresso_keys_need_it_named():
    assert ESEArguments(ese_enabled=True).settings().schedule == "starbucks"
    # A config written when espresso was the default is refused, even with every key at its default value.
    with pytest.raises(ValueError, match=r"ese.compression_size, ese.layer_weighting apply to schedule espresso only, "
                                         r"and the schedule is starbucks \(the default, which was espresso before\): "
                                         r"set ese.schedule: espresso"):
        ESEArguments(ese_enabled=True, ese_compression_size=128, ese_layer_weighting="log")
    with pytest.raises(ValueError, match="compression_size applies to schedule espresso only"):
        ESESettings(compression_size=64)
    espresso = ESEArguments(ese_enabled=True, ese_schedule="espresso", ese_compression_size=64)
    assert (espresso.ese_layer_weighting, espresso.ese_compression_size, espresso.ese_starbucks_ladder) == (
        "log", 64, None)  # the schedule's keys resolved, the other schedule's left unset
    assert ESEArguments(**asdict(espresso)) == espresso  # so resolved_config.yaml parses again as it is
    starbucks = ESEArguments(ese_enabled=True)
    assert (starbucks.ese_starbucks_ladder, starbucks.ese_compression_size, starbucks.ese_kl_temperature) == (
        "diagonal", None, 1.0)
    assert ESEArguments(**asdict(starbucks)) == starbucks
    # A resolved config written when every key was resolved (both schedules' defaults) names its schedule: it parses.
    for schedule in ("espresso", "starbucks"):
        resolved_before = {f"ese_{name}": value for name, value in asdict(ESESettings(schedule=schedule)).items()}
        assert ESEArguments(ese_enabled=True, **resolved_before).settings() == ESESettings(schedule=schedule)
    with pytest.raises(ValueError, match=r"ese.compression_size applies to schedule espresso only, and the schedule "
                                         r"is starbucks: set ese.schedule: espresso"):
        ESEArguments(ese_enabled=True, ese_schedule="starbucks", ese_compression_size=64)


def test_the_fingerprint_records_every_ese_setting_as_checkpoints_did_before():
    """Checkpoints saved when every key was resolved record the other schedule's defaults too: a run with the same
    settings must compare equal to them, and one whose schedule changed with the default must not."""
    espresso = ESEArguments(ese_enabled=True, ese_schedule="espresso")
    recorded_before = {"ese_enabled": True, **{f"ese_{name}": value
                                               for name, value in asdict(ESESettings(schedule="espresso")).items()}}
    assert ese_fingerprint(espresso) == recorded_before
    changes = fingerprint_changes({"ese": recorded_before}, {"ese": ese_fingerprint(ESEArguments(ese_enabled=True))})
    assert changes["ese.ese_schedule"] == {"checkpoint": "espresso", "now": "starbucks"}
    assert ese_fingerprint(ESEArguments()) == asdict(ESEArguments())
