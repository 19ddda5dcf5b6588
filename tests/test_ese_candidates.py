"""The options that may bring ESE's slices closer to their separately trained twins (issue 33), each off by default:
Starbucks' ladder, slices per step, per-slice weights, the similarity distillation toward the full model (teacher
detached), and the layer weightings."""

import pytest
import torch
import torch.nn.functional as F

from ese_trainer.config.parsing import parse_config
from ese_trainer.ese import ESELoss, ESESettings
from ese_trainer.ese.arguments import ESEArguments
from ese_trainer.ese.distillation import distillation_loss, similarity_distillation_loss
from ese_trainer.ese.starbucks import (
    STARBUCKS,
    STARBUCKS_DISTILL,
    STARBUCKS_SIMILARITY,
    default_diagonal,
    ladder_slices,
    starbucks_terms,
)

from .conftest import snli_rows
from .test_ese_loss import _layers
from .test_starbucks import _mean_pair_loss
from .test_trainer import make_trainer

THREE_SLICES = ["1x4", "2x8", "3x16"]  # a 3-layer, 16-dim model: (3, 16) is the full slice, the main loss


def _row_by_row_kl(student, teacher, temperature):
    """Starbucks' term written out per row: KL(softmax(t/τ) ‖ softmax(s/τ)) over the batch's other texts."""
    total = 0.0
    for row in range(student.shape[0]):
        others = [index for index in range(student.shape[0]) if index != row]
        s = F.cosine_similarity(student[row:row + 1], student[others]) / temperature
        t = F.cosine_similarity(teacher[row:row + 1], teacher[others]) / temperature
        total = total + F.kl_div(F.log_softmax(s, dim=-1), F.softmax(t, dim=-1), reduction="sum")
    return total / student.shape[0]


# --- the similarity distillation: Starbucks' KL over in-batch similarity rows, the teacher detached -----------------


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_similarity_distillation_is_the_kl_of_each_row_over_the_other_texts(temperature):
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(12, 4, generator=generator), torch.randn(12, 16, generator=generator)
    expected = _row_by_row_kl(student, teacher, temperature)
    assert torch.allclose(similarity_distillation_loss(student, teacher, temperature), expected, atol=1e-5)
    assert similarity_distillation_loss(teacher, teacher, temperature).abs() < 1e-5  # identical similarities: 0


def test_similarity_distillation_never_trains_its_teacher():
    """sentence-transformers #3757: the 2-D loss's KL teacher was not detached. Here no gradient reaches it, even when
    the student is a slice of the very tensor the teacher is (layer n at fewer dims)."""
    generator = torch.Generator().manual_seed(1)
    teacher = torch.randn(10, 16, generator=generator, requires_grad=True)
    student = torch.randn(10, 16, generator=generator, requires_grad=True)
    similarity_distillation_loss(student[:, :4], teacher, 0.05).backward()
    assert teacher.grad is None and student.grad[:, :4].abs().sum() > 0 and not student.grad[:, 4:].any()

    full = torch.randn(10, 16, generator=generator, requires_grad=True)
    similarity_distillation_loss(full[:, :4], full, 0.05).backward()
    constant = full.detach().clone().requires_grad_(True)
    similarity_distillation_loss(constant[:, :4], full.detach().clone(), 0.05).backward()
    assert torch.allclose(full.grad, constant.grad) and not full.grad[:, 4:].any()


def test_similarity_distillation_validation():
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        similarity_distillation_loss(torch.randn(4, 2), torch.randn(4, 8), 0.0)
    with pytest.raises(ValueError, match="same N texts"):
        similarity_distillation_loss(torch.randn(4, 2), torch.randn(5, 8), 0.05)
    for texts in (1, 2):  # no other text, or one: nothing to choose between, nothing to distil
        loss = similarity_distillation_loss(torch.randn(texts, 2, requires_grad=True), torch.randn(texts, 8), 0.05)
        assert loss.item() == pytest.approx(0.0, abs=1e-6) and loss.requires_grad


def test_starbucks_similarity_term_distils_every_slice_toward_the_full_model():
    layers = _layers(3, dim=16, requires_grad=True)
    loss = ESELoss(ESESettings(schedule="starbucks", starbucks_pairs=THREE_SLICES, starbucks_similarity_weight=0.5,
                               starbucks_similarity_temperature=0.1), 3, 16)
    terms = loss(layers, _mean_pair_loss)
    expected = sum(similarity_distillation_loss(layers[layer][:, :dim], layers[3], 0.1) for layer, dim in [(1, 4),
                                                                                                        (2, 8)])
    assert torch.allclose(terms[STARBUCKS_SIMILARITY], expected)
    assert torch.allclose(terms["loss_ese"], terms[STARBUCKS] + 0.5 * terms[STARBUCKS_SIMILARITY])
    terms["loss_ese"].backward()
    assert layers[3].grad is None  # the full model is the teacher only: the ESE terms never move it
    assert layers[1].grad[:, :4].any() and not layers[1].grad[:, 4:].any()


def test_starbucks_distillation_target_is_detached():
    """The compression-target distillation is detached as well: a target that is a differentiable function of the
    student's own layer gives exactly the gradient of a constant target."""
    def differentiable_target(layer, embeddings, dim):
        return 2 * embeddings[:, :dim] + 1  # not detached by the caller

    layers = _layers(2, dim=16, requires_grad=True)
    terms = starbucks_terms(layers, [(1, 4), (2, 16)], 2, lambda embeddings: embeddings.sum() * 0, 1.0, 2.0,
                            differentiable_target)
    terms[STARBUCKS_DISTILL].backward()
    constant = layers[1].detach().clone().requires_grad_(True)
    parts = distillation_loss(constant[:, :4], (2 * layers[1][:, :4] + 1).detach(), 2.0)
    (parts["mse"] + parts["kl"]).backward()
    assert torch.allclose(layers[1].grad, constant.grad)


# --- per-slice weights ------------------------------------------------------------------------------------------


def test_per_slice_weights_as_numbers():
    layers = _layers(3, dim=16)
    loss = ESELoss(ESESettings(schedule="starbucks", starbucks_pairs=THREE_SLICES, starbucks_weights=["2", "0.5"]),
                   3, 16)
    terms = loss(layers, _mean_pair_loss)
    expected = 2 * _mean_pair_loss(layers[1][:, :4]) + 0.5 * _mean_pair_loss(layers[2][:, :8])
    assert torch.allclose(terms[STARBUCKS], expected)
    with pytest.raises(ValueError, match=r"starbucks_weights: 2 value\(s\) for the slices 1x4 2x8 \(the full slice "
                                         r"is the main loss\), got 3"):
        ESELoss(ESESettings(schedule="starbucks", starbucks_pairs=THREE_SLICES, starbucks_weights=["1", "1", "1"]),
                3, 16)


@pytest.mark.parametrize("scheme", ["log", "linear", "depth"])
def test_per_slice_weights_from_a_layer_weighting_average_one(scheme):
    from ese_trainer.ese.layer_weights import layer_weight

    loss = ESELoss(ESESettings(schedule="starbucks", starbucks_weights=[scheme]), 6, 384)
    trained = default_diagonal(6, 384)[:-1]
    assert list(loss.slice_weights) == trained
    raw = [layer_weight(layer, scheme, 6) for layer, _ in trained]
    assert list(loss.slice_weights.values()) == pytest.approx([5 * value / sum(raw) for value in raw])
    assert sum(loss.slice_weights.values()) == pytest.approx(5.0)  # the total of the unweighted ladder


@pytest.mark.parametrize("values,pattern", [(["x"], "neither a number nor one of"), (["-1"], "finite number >= 0"),
                                            (["0", "0"], "every weight is 0"), (["nan"], "finite number >= 0")])
def test_bad_slice_weights_are_refused(values, pattern):
    with pytest.raises(ValueError, match=pattern):
        ESESettings(schedule="starbucks", starbucks_weights=values)


# --- slices per step ------------------------------------------------------------------------------------------


def _recording_pair_loss(seen):
    def pair_loss(embeddings):
        seen.append(embeddings.shape[1])
        return _mean_pair_loss(embeddings)
    return pair_loss


def test_a_subset_of_slices_per_step_drawn_from_the_step_scaled_to_the_whole_ladder():
    settings = ESESettings(schedule="starbucks", starbucks_pairs=["1x4", "2x6", "3x8", "4x16"],
                           starbucks_slices_per_step=1)
    first, second = ESELoss(settings, 4, 16).train(), ESELoss(settings, 4, 16).train()
    layers = _layers(4, dim=16)
    single = {dim: _mean_pair_loss(layers[layer][:, :dim]) for layer, dim in [(1, 4), (2, 6), (3, 8)]}
    draws = []
    for _ in range(30):
        seen = []
        terms = first(layers, _recording_pair_loss(seen))
        assert len(seen) == 1  # one slice this step, its term scaled by 3 slices / 1
        assert torch.allclose(terms[STARBUCKS], 3 * single[seen[0]])
        draws.append(seen[0])
        seen_again = []
        second(layers, _recording_pair_loss(seen_again))
        assert seen_again == seen  # the same draw on every process (and module) at the same step
    assert set(draws) == {4, 6, 8}

    resumed = ESELoss(settings, 4, 16).train()
    resumed.load_state_dict(first.state_dict())  # the step count is a buffer: checkpoints carry it
    expected, seen = [], []
    first(layers, _recording_pair_loss(expected))
    resumed(layers, _recording_pair_loss(seen))
    assert seen == expected

    seen = []
    terms = first.eval()(layers, _recording_pair_loss(seen))
    assert seen == [4, 6, 8] and torch.allclose(terms[STARBUCKS], sum(single.values()))  # evaluation: every slice


# --- the ladder -------------------------------------------------------------------------------------------------


def test_ladder_diagonal_grid_or_explicit():
    assert ladder_slices(None, "diagonal", 3, 384) == [(1, 128), (2, 256), (3, 384)]
    assert ladder_slices(None, "grid", 3, 384) == [(layer, dim) for layer in (1, 2, 3) for dim in (128, 256, 384)]
    assert len(ladder_slices(None, "grid", 6, 384)) == 36
    assert ladder_slices(["1x64", "3x384"], "diagonal", 3, 384) == [(1, 64), (3, 384)]
    with pytest.raises(ValueError, match="set starbucks_pairs or starbucks_ladder, not both"):
        ESESettings(schedule="starbucks", starbucks_pairs=["1x8"], starbucks_ladder="grid")
    with pytest.raises(ValueError, match="starbucks_ladder must be one of"):
        ESESettings(schedule="starbucks", starbucks_ladder="triangle")
    loss = ESELoss(ESESettings(schedule="starbucks", starbucks_ladder="grid"), 3, 384)
    assert loss.layers == [1, 2, 3] and len(loss.slice_weights) == 8  # the grid but the full slice


def test_starbucks_keys_need_the_starbucks_schedule():
    with pytest.raises(ValueError, match="starbucks_similarity_weight applies to schedule starbucks only"):
        ESESettings(schedule="espresso", starbucks_similarity_weight=1.0)
    with pytest.raises(ValueError, match="ese.starbucks_ladder, ese.starbucks_slices_per_step apply to schedule "
                                         "starbucks only, and the schedule is espresso: set ese.schedule: starbucks"):
        ESEArguments(ese_enabled=True, ese_schedule="espresso", ese_starbucks_ladder="grid",
                     ese_starbucks_slices_per_step=2)
    with pytest.raises(ValueError, match="starbucks_slices_per_step must be >= 0"):
        ESESettings(schedule="starbucks", starbucks_slices_per_step=-1)
    with pytest.raises(ValueError, match="starbucks_similarity_temperature > 0"):
        ESESettings(schedule="starbucks", starbucks_similarity_temperature=0.0)


# --- the options as flags, in a run -----------------------------------------------------------------------------


def test_every_candidate_is_a_command_line_flag():
    (ese,) = parse_config(["--ese.enabled", "true", "--ese.schedule", "starbucks", "--ese.starbucks_ladder", "grid",
                           "--ese.starbucks_weights", "log", "--ese.starbucks_slices_per_step", "2",
                           "--ese.starbucks_similarity_weight", "1.0", "--ese.starbucks_similarity_temperature", "0.1"],
                          (ESEArguments,))
    settings = ese.settings()
    assert (settings.starbucks_ladder, settings.starbucks_weights, settings.starbucks_slices_per_step,
            settings.starbucks_similarity_weight, settings.starbucks_similarity_temperature) == (
        "grid", ["log"], 2, 1.0, 0.1)
    (ese,) = parse_config(["--ese.enabled", "true", "--ese.schedule", "starbucks", "--ese.starbucks_pairs", "1x128",
                           "2x256", "3x384", "--ese.starbucks_weights", "2", "1"], (ESEArguments,))
    assert ese.settings().starbucks_pairs == ["1x128", "2x256", "3x384"]
    assert ESELoss(ese.settings(), 3, 384).slice_weights == {(1, 128): 2.0, (2, 256): 1.0}
    (ese,) = parse_config(["--ese.enabled", "true", "--ese.schedule", "espresso", "--ese.layer_weighting", "linear"],
                          (ESEArguments,))
    assert ese.settings().layer_weighting == "linear"


def test_a_run_with_every_starbucks_option_trains_and_logs_its_terms(tiny_bert, tokenizer, tmp_path):
    ese = ESEArguments(ese_enabled=True, ese_schedule="starbucks", ese_starbucks_ladder="grid",
                       ese_starbucks_weights=["log"], ese_starbucks_slices_per_step=2,
                       ese_starbucks_similarity_weight=1.0, ese_starbucks_distill_weight=0.5)
    trainer = make_trainer(tiny_bert, tokenizer, snli_rows(16, seed=3), tmp_path, ese_args=ese, max_steps=2)
    objective = trainer.model.objective.ese_loss
    assert objective.slices == [(1, 24), (1, 32), (2, 24), (2, 32)]  # tiny BERT: 2 layers x 32
    assert trainer.model.encoder.pooled_layers == [1]
    before = {name: parameter.detach().clone() for name, parameter in tiny_bert.named_parameters()}
    trainer.train()
    logged = trainer.state.log_history[0]
    assert {"loss_ese", STARBUCKS, STARBUCKS_DISTILL, STARBUCKS_SIMILARITY} <= set(logged)
    assert all(torch.isfinite(torch.tensor(logged[name])) for name in (STARBUCKS, STARBUCKS_SIMILARITY))
    assert int(objective.forwards) == 2 and any(not torch.equal(before[name], parameter)
                                                for name, parameter in tiny_bert.named_parameters())
