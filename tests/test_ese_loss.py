"""ESE terms (ese_trainer.ese): layer weights, compression targets, distillation and the combined terms, including
the three defects of AnglE's AngleESETrainer that they fix (students 1..n−1, τ² KL, teacher terms with gradient)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from ese_trainer.ese import ESELoss, ESESettings
from ese_trainer.ese.compression import CompressionOutput, MoECompressionHead, pca_target, svd_flip_columns
from ese_trainer.ese.distillation import distillation_loss
from ese_trainer.ese.layer_weights import layer_weights
from ese_trainer.ese.loss import (
    DISTILL_LAST,
    DISTILL_PRIOR,
    ESE_TOTAL,
    HEAD_BALANCE,
    HEAD_RECONSTRUCTION,
    LAST_COMPRESSED,
    PRIOR,
    combine_ese_terms,
    ese_terms,
)
from ese_trainer.losses import cosent_loss, expert_shares, switch_balance_loss


@pytest.fixture(autouse=True)
def _one_thread():
    """The matrices here are small: extra threads only add overhead, and stall badly on shared cores (a 384 x 384
    SVD took seconds instead of 20 ms with 2 threads on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def espresso(**settings) -> ESESettings:
    """ESE's settings with the Espresso schedule (the default is Starbucks)."""
    return ESESettings(schedule="espresso", **settings)


def _anisotropic(batch: int = 32, dim: int = 16, seed: int = 0) -> torch.Tensor:
    """Embeddings with a decaying spectrum and a common offset (as real ones), so A's top singular values are
    well separated and its singular vectors well conditioned."""
    generator = torch.Generator().manual_seed(seed)
    rotation = torch.linalg.qr(torch.randn(dim, dim, generator=generator))[0]
    return (torch.randn(batch, dim, generator=generator) * torch.logspace(0.5, -1, dim)) @ rotation + 0.5


def _layers(num_layers: int, texts: int = 16, dim: int = 16, seed: int = 0, requires_grad: bool = False):
    """Per layer, the embeddings of a batch's ``texts`` texts."""
    generator = torch.Generator().manual_seed(seed)
    return {layer: torch.randn(texts, dim, generator=generator).requires_grad_(requires_grad)
            for layer in range(1, num_layers + 1)}


def _first_column_mean(embeddings: torch.Tensor) -> torch.Tensor:
    """A loss that reads dim 0 only (inside both the full and the first-k embedding)."""
    return embeddings[:, 0].mean()


def _pairs_of(loss):
    """A loss of the batch's texts read as pairs: the first half against the second half."""
    return lambda embeddings: loss(*embeddings.chunk(2))


# --- layer weights -------------------------------------------------------------------------------------------


def test_layer_weight_schemes():
    layers = [1, 2, 5]
    assert layer_weights(layers, "uniform") == {1: 1.0, 2: 1.0, 5: 1.0}
    log = layer_weights(layers, "log")
    assert log == pytest.approx({layer: 1 / (1 + math.log(1 + layer)) for layer in layers})
    assert log[1] == pytest.approx(1 / (1 + math.log(2)))  # AnglE's weight of hidden_states[1]
    assert layer_weights(layers, "linear") == pytest.approx({1: 1 / 2, 2: 1 / 3, 5: 1 / 6})
    assert layer_weights(layers, "depth", num_layers=6) == pytest.approx({1: 1 / 6, 2: 2 / 6, 5: 5 / 6})


@pytest.mark.parametrize("scheme", ["uniform", "log", "linear"])
def test_layer_weights_equal_sentence_transformers_adaptive_layer_loss(scheme):
    """The schemes sentence-transformers names give hidden_states[l] the weight its AdaptiveLayerLoss gives it (its
    layer_idx counts the embedding output as 0, as hidden_states does)."""
    from types import SimpleNamespace

    from sentence_transformers.sentence_transformer.losses import AdaptiveLayerLoss

    theirs = {layer: AdaptiveLayerLoss.get_layer_weight(SimpleNamespace(layer_weighting=scheme), layer)
              for layer in range(1, 12)}
    assert layer_weights(list(range(1, 12)), scheme, num_layers=12) == pytest.approx(theirs, rel=1e-12)


def test_layer_weights_validation():
    with pytest.raises(ValueError, match="embedding-layer output"):
        layer_weights([0, 1], "log")
    with pytest.raises(ValueError, match="teacher"):
        layer_weights([6], "log", num_layers=6)
    with pytest.raises(ValueError, match="uniform, log, linear, depth"):
        layer_weights([1], "cubic")
    with pytest.raises(ValueError, match="num_layers"):
        layer_weights([1], "depth")
    with pytest.raises(ValueError, match="duplicate"):
        layer_weights([1, 1], "log")


# --- ese_terms: which layers, which weights ------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["log", "linear", "uniform", "depth"])
def test_six_layer_model_students_are_layers_1_to_5(scheme):
    """Defect (a): the students are hidden_states[1..n−1] (embedding output excluded, last-but-one included)."""
    layers = _layers(6)
    for layer, embeddings in layers.items():
        embeddings.data[:, 0] = float(layer)  # the loss of layer l is l
    distilled = []

    def recording_target(layer, embeddings):
        distilled.append(layer)
        return pca_target(embeddings, 4)

    terms = ese_terms(layers, 6, _first_column_mean, 4, 1.0, scheme, targets=recording_target)
    assert sorted(distilled) == [1, 2, 3, 4, 5, 6]
    assert set(terms) == {LAST_COMPRESSED, DISTILL_LAST, PRIOR, DISTILL_PRIOR}
    weights = layer_weights([1, 2, 3, 4, 5], scheme, num_layers=6)
    expected = sum(w * 2 * layer for layer, w in weights.items()) / sum(weights.values())  # L(e_l) + L(e_l^k)
    assert terms[PRIOR].item() == pytest.approx(expected, rel=1e-6)
    assert terms[LAST_COMPRESSED].item() == pytest.approx(6.0)


def test_distillation_runs_on_every_text_of_the_batch():
    layers = _layers(2)
    seen = {}

    def target(layer, embeddings):
        seen[layer] = embeddings
        return pca_target(embeddings, 4)

    ese_terms(layers, 2, _first_column_mean, 4, 1.0, targets=target)
    for layer, embeddings in layers.items():
        assert torch.equal(seen[layer], embeddings)


def test_prior_terms_absent_for_single_layer_or_zero_weight():
    terms = ese_terms(_layers(1), 1, _first_column_mean, 4, 1.0)
    assert set(terms) == {LAST_COMPRESSED, DISTILL_LAST}
    distilled = []
    terms = ese_terms(_layers(4), 4, _first_column_mean, 4, 1.0, prior_layers_weight=0.0,
                      targets=lambda layer, e: distilled.append(layer) or pca_target(e, 4))
    assert set(terms) == {LAST_COMPRESSED, DISTILL_LAST} and distilled == [4]


def test_ese_terms_validation():
    with pytest.raises(ValueError, match="embedding-layer output"):
        ese_terms({0: _layers(1)[1], **_layers(3)}, 3, _first_column_mean, 4, 1.0)
    with pytest.raises(ValueError, match=r"layer 4 outside 1\.\.3"):
        ese_terms(_layers(4), 3, _first_column_mean, 4, 1.0)
    for k in (16, 20, 0):
        with pytest.raises(ValueError, match=rf"compression_size={k}.*D=16"):
            ese_terms(_layers(2), 2, _first_column_mean, k, 1.0)
    with pytest.raises(ValueError, match="last layer"):
        ese_terms({1: _layers(1)[1]}, 3, _first_column_mean, 4, 1.0)
    with pytest.raises(ValueError, match="kl_temperature"):
        ese_terms(_layers(2), 2, _first_column_mean, 4, 0.0)
    with pytest.raises(ValueError, match="uniform, log, linear"):
        ese_terms(_layers(2), 2, _first_column_mean, 4, 1.0, layer_weighting="cubic")


# --- gradients: teacher terms train e_n^k, the target is a stop-gradient -------------------------------------


def test_teacher_terms_train_last_layer_first_k_dims_not_through_the_target():
    """Defect (c): the teacher terms have gradient on e_n^k; none flows through t_n (else e_n[:, k:] would get
    some, since the PCA target reads every dim)."""
    k = 4
    layers = _layers(3, requires_grad=True)
    terms = ese_terms(layers, 3, _pairs_of(lambda a, b: cosent_loss(a, b, torch.linspace(0, 1, 8))), k, 2.0,
                      prior_layers_weight=0.0)
    terms[DISTILL_LAST].backward(retain_graph=True)  # the distillation term alone reaches e_n^k
    assert layers[3].grad[:, :k].abs().sum() > 0 and torch.all(layers[3].grad[:, k:] == 0)
    terms[LAST_COMPRESSED].backward()
    assert torch.all(layers[3].grad[:, k:] == 0)
    assert layers[1].grad is None  # prior_layers_weight 0: students untouched


def test_custom_targets_are_detached_by_ese_terms():
    k = 4
    layers = _layers(2, requires_grad=True)
    differentiable = lambda layer, e: 2 * e[:, :k] + e[:, k : 2 * k]  # noqa: E731
    terms = ese_terms(layers, 2, _first_column_mean, k, 1.0, targets=differentiable)
    (terms[DISTILL_LAST] + terms[DISTILL_PRIOR]).backward()
    for embeddings in layers.values():
        assert embeddings.grad[:, :k].abs().sum() > 0 and torch.all(embeddings.grad[:, k:] == 0)


def test_pca_target_is_a_stop_gradient():
    embeddings = _anisotropic().requires_grad_(True)
    target = pca_target(embeddings, 3)
    assert not target.requires_grad and target.grad_fn is None
    assert pca_target(embeddings.bfloat16(), 3).dtype == torch.float32


# --- distillation: τ² KL ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_distillation_equals_hand_computation(temperature):
    generator = torch.Generator().manual_seed(1)
    student, target = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    p, q = F.softmax(target / temperature, dim=-1), F.softmax(student / temperature, dim=-1)
    hand_kl = temperature**2 * (p * (p.log() - q.log())).sum() / 6
    loss = distillation_loss(student, target, temperature)
    assert loss["kl"].item() == pytest.approx(hand_kl.item(), rel=1e-5)
    assert loss["mse"].item() == pytest.approx(((student - target) ** 2).mean().item(), rel=1e-6)


def test_kl_gradient_magnitude_is_independent_of_temperature():
    """Defect (b): with τ² the KL gradient tends to a constant for large τ; AnglE's τ scaling makes it ∝ 1/τ."""
    generator = torch.Generator().manual_seed(2)
    student, target = torch.randn(8, 16, generator=generator), torch.randn(8, 16, generator=generator)

    def gradient_norm(temperature: float, angle_scaling: bool) -> float:
        s = student.clone().requires_grad_(True)
        kl = distillation_loss(s, target, temperature)["kl"]
        if angle_scaling:
            kl = kl / temperature**2 * temperature
        kl.backward()
        return s.grad.norm().item()

    ours = [gradient_norm(t, False) for t in (20.0, 40.0, 80.0)]
    angle = [gradient_norm(t, True) for t in (20.0, 40.0, 80.0)]
    assert ours[2] / ours[0] == pytest.approx(1.0, abs=0.03)
    assert angle[2] / angle[0] == pytest.approx(0.25, abs=0.01)


def test_distillation_validation():
    student = torch.randn(4, 3)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            distillation_loss(student, student, bad)
    with pytest.raises(ValueError, match="equal shape"):
        distillation_loss(student, torch.randn(4, 2), 1.0)


# --- pca_target ----------------------------------------------------------------------------------------------


def test_pca_target_matches_the_formula():
    m, k = _anisotropic(), 3
    u, s, _ = torch.linalg.svd(torch.softmax(m.T @ m / math.sqrt(16), dim=-1))
    u_k = u[:, :k].clone()
    for j in range(k):  # sklearn's svd_flip, written out
        u_k[:, j] *= torch.sign(u_k[u_k[:, j].abs().argmax(), j])
    assert torch.allclose(pca_target(m, k), m @ u_k @ torch.diag(s[:k]), atol=1e-5)


def test_svd_flip_columns_fixes_signs():
    u = torch.linalg.qr(torch.randn(10, 10))[0][:, :4]
    flipped = svd_flip_columns(u)
    largest = flipped.gather(0, flipped.abs().argmax(dim=0, keepdim=True))
    assert torch.all(largest > 0)
    assert torch.equal(svd_flip_columns(u * torch.tensor([-1.0, 1.0, -1.0, -1.0])), flipped)


def test_pca_target_ignores_the_sign_the_svd_returns(monkeypatch):
    m = _anisotropic()
    expected = pca_target(m, 3)
    real_svd = torch.linalg.svd

    def sign_flipping_svd(a, *args, **kwargs):
        u, s, vh = real_svd(a, *args, **kwargs)
        signs = torch.where(torch.arange(u.shape[-1]) % 2 == 0, -1.0, 1.0)
        return u * signs, s, vh * signs[:, None]

    monkeypatch.setattr(torch.linalg, "svd", sign_flipping_svd)
    assert torch.equal(pca_target(m, 3), expected)


def test_pca_target_is_invariant_to_the_batch_row_order():
    m = _anisotropic()
    target = pca_target(m, 3)
    for seed in range(3):
        permutation = torch.randperm(len(m), generator=torch.Generator().manual_seed(seed))
        assert torch.allclose(pca_target(m[permutation], 3), target[permutation], atol=1e-3)


@pytest.mark.parametrize("case", ["zeros", "rank_one", "fewer_rows_than_dims", "large"])
def test_pca_target_is_finite_for_rank_deficient_inputs(case):
    generator = torch.Generator().manual_seed(3)
    m = {
        "zeros": torch.zeros(8, 16),
        "rank_one": torch.randn(8, 1, generator=generator) * torch.randn(1, 16, generator=generator),
        "fewer_rows_than_dims": torch.randn(2, 16, generator=generator),
        "large": 100 * torch.randn(8, 16, generator=generator),
    }[case]
    target = pca_target(m, 4)
    assert target.shape == (len(m), 4) and torch.isfinite(target).all()


def test_pca_target_batched_over_layers_equals_per_layer():
    stack = torch.stack([_anisotropic(seed=seed) for seed in range(3)])
    batched = pca_target(stack, 3)
    for layer in range(3):
        assert torch.allclose(batched[layer], pca_target(stack[layer], 3), atol=1e-5)


def test_pca_target_validation():
    with pytest.raises(ValueError, match=r"k=16 must be in 1\.\.D-1 \(D=16\)"):
        pca_target(torch.randn(4, 16), 16)
    with pytest.raises(ValueError, match="B x D"):
        pca_target(torch.randn(16), 4)


# --- MoE compression head ------------------------------------------------------------------------------------


def test_moe_head_target_is_detached_and_never_trains_the_encoder():
    head = MoECompressionHead(16, 4, expert_hidden=8)
    embeddings = torch.randn(10, 16, requires_grad=True)
    output = head(embeddings)
    assert isinstance(output, CompressionOutput)
    assert output.target.shape == (10, 4) and output.router_logits.shape == (10, 4)
    assert not output.target.requires_grad
    (output.reconstruction_loss + output.load_balancing_loss).backward()
    assert embeddings.grad is None
    assert all(parameter.grad is not None for parameter in head.parameters())
    decoder = head.decoder.weight
    assert torch.allclose(decoder.T @ decoder, torch.eye(4), atol=1e-5)  # orthonormal columns


def test_moe_head_mixes_top_k_experts_with_renormalised_weights():
    head = MoECompressionHead(16, 3, num_experts=4, expert_hidden=8, top_k=2)
    with torch.no_grad():
        for index, expert in enumerate(head.experts):  # expert e outputs the constant e + 1
            expert[2].weight.zero_()
            expert[2].bias.fill_(index + 1.0)
    embeddings = torch.randn(12, 16)
    output = head(embeddings)
    probabilities = torch.softmax(head.gate(embeddings), dim=-1)
    top, indices = probabilities.topk(2, dim=-1)
    expected = ((top / top.sum(-1, keepdim=True)) * (indices + 1.0)).sum(-1)
    assert torch.allclose(output.target, expected[:, None].expand(12, 3), atol=1e-5)


def test_moe_reconstruction_loss_decreases_with_training():
    torch.manual_seed(0)
    data = torch.randn(256, 4) @ torch.randn(4, 32) + 0.05 * torch.randn(256, 32) + 3.0  # rank 4 + noise
    head = MoECompressionHead(32, 4, expert_hidden=32)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(300):
        output = head(data)
        losses.append(output.reconstruction_loss.item())
        optimizer.zero_grad()
        (output.reconstruction_loss + 0.1 * output.load_balancing_loss).backward()
        optimizer.step()
    assert losses[-1] < 0.25 * losses[0] and losses[-1] < 0.3  # a fraction of the variance left unexplained
    fractions = expert_shares(head(data).router_logits, head.top_k)
    assert fractions.min() > 0.1  # no dead expert with the balancing weight 0.1


def test_load_balancing_loss_is_one_for_uniform_routing():
    # Row i prefers expert i mod 4 by the same margin: assignments and mean probabilities are both uniform.
    router_logits = 5.0 * F.one_hot(torch.arange(8) % 4, 4).float()
    assert switch_balance_loss(router_logits, top_k=1).item() == pytest.approx(1.0, abs=1e-6)
    assert switch_balance_loss(torch.zeros(8, 4), top_k=2).item() == pytest.approx(1.0, abs=1e-6)
    collapsed = torch.tensor([[20.0, 0.0, 0.0, 0.0]]).expand(8, 4)
    assert switch_balance_loss(collapsed, top_k=1).item() == pytest.approx(4.0, abs=1e-3)


def test_expert_shares():
    fractions = expert_shares(torch.randn(32, 4), top_k=2)
    assert fractions.shape == (4,) and fractions.sum().item() == pytest.approx(1.0)
    fractions = expert_shares(5.0 * F.one_hot(torch.arange(8) % 4, 4).float(), top_k=1)
    assert torch.allclose(fractions, torch.full((4,), 0.25))


def test_moe_head_validation():
    with pytest.raises(ValueError, match="top_k"):
        MoECompressionHead(16, 4, num_experts=2, top_k=3)
    with pytest.raises(ValueError, match=r"k=16 must be in 1\.\.hidden_size-1"):
        MoECompressionHead(16, 16)
    with pytest.raises(ValueError, match="B x 16"):
        MoECompressionHead(16, 4)(torch.randn(3, 8))


# --- combination and the module ------------------------------------------------------------------------------


def test_combine_ese_terms():
    terms = {LAST_COMPRESSED: torch.tensor(1.0), DISTILL_LAST: torch.tensor(2.0), PRIOR: torch.tensor(3.0),
             DISTILL_PRIOR: torch.tensor(4.0)}
    assert combine_ese_terms(terms, 0.5, 2.0).item() == pytest.approx(0.5 * 3 + 2.0 * 7)
    with_heads = {**terms, HEAD_RECONSTRUCTION: torch.tensor(0.3), HEAD_BALANCE: torch.tensor(1.0)}
    assert combine_ese_terms(with_heads, 1.0, 1.0, head_balance_weight=0.1).item() == pytest.approx(10 + 0.3 + 0.1)
    assert combine_ese_terms({LAST_COMPRESSED: terms[LAST_COMPRESSED], DISTILL_LAST: terms[DISTILL_LAST]},
                             1.0, 1.0).item() == pytest.approx(3.0)


def test_ese_loss_with_pca_equals_the_functions():
    layers = _layers(4)
    loss = ESELoss(espresso(compression_size=4, kl_temperature=2.0, layer_weighting="linear", last_layer_weight=0.5,
                               prior_layers_weight=2.0), num_layers=4, hidden_size=16)
    assert loss.layers == [1, 2, 3, 4] and list(loss.parameters()) == []
    expected = ese_terms(layers, 4, _first_column_mean, 4, 2.0, "linear", 0.5, 2.0)
    terms = loss(layers, _first_column_mean)
    total = terms.pop(ESE_TOTAL)
    assert terms.keys() == expected.keys() and all(torch.equal(terms[name], expected[name]) for name in terms)
    assert torch.equal(total, combine_ese_terms(expected, 0.5, 2.0))


def test_ese_loss_with_moe_heads():
    loss = ESELoss(espresso(compression_size=4, compression_target="moe", head_expert_hidden=8), 3, 16)
    assert sorted(loss.heads) == ["1", "2", "3"]
    layers = _layers(3, requires_grad=True)
    terms = loss(layers, _first_column_mean)
    assert {HEAD_RECONSTRUCTION, HEAD_BALANCE} <= set(terms)
    assert sorted(loss.head_router_logits) == [1, 2, 3]  # kept for the utilisation tally
    terms[ESE_TOTAL].backward()
    assert all(parameter.grad is not None for parameter in loss.parameters())
    assert layers[3].grad[:, :4].abs().sum() > 0
    last_only = ESELoss(espresso(compression_size=4, compression_target="moe", prior_layers_weight=0.0), 3, 16)
    assert sorted(last_only.heads) == ["3"] and last_only.student_layers == []


def test_ese_settings_validation():
    with pytest.raises(ValueError, match="pca', 'moe"):
        espresso(compression_target="svd")
    with pytest.raises(ValueError, match=r"compression_size=16 must be in 1..15"):
        ESELoss(espresso(compression_size=16), num_layers=3, hidden_size=16)
    with pytest.raises(ValueError, match="head_top_k"):
        espresso(head_num_experts=2, head_top_k=3)
    with pytest.raises(ValueError, match="lacks layers"):
        ESELoss(espresso(compression_size=4), 3, 16)({3: _layers(1)[1]}, _first_column_mean)


def test_real_minilm_students_are_transformer_blocks_1_to_5(minilm, tokenizer):
    """On all-MiniLM-L6-v2 (6 layers, D=384): hidden_states[l] is block l's output; the prior terms alone train
    blocks 1..5 (encoder.layer[0..4]) and not block 6, the teacher terms train block 6."""
    model = copy.deepcopy(minilm)
    sentences = ["A man is playing a guitar.", "A person plays an instrument.", "A cat sleeps on the sofa.",
                 "Stocks fell sharply today.", "The chef slices an onion.", "Someone is cutting vegetables.",
                 "Kids play football in the park.", "The market rallied this morning."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    hidden_states = model(**batch, output_hidden_states=True).hidden_states
    assert len(hidden_states) == 7
    mask = batch["attention_mask"].unsqueeze(-1).float()
    layers = {layer: (hidden_states[layer] * mask).sum(1) / mask.sum(1) for layer in range(1, 7)}
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0])
    pair_loss = _pairs_of(lambda emb_a, emb_b: cosent_loss(emb_a, emb_b, scores))

    prior_only = ESELoss(espresso(compression_size=128, last_layer_weight=0.0), num_layers=6, hidden_size=384)
    terms = prior_only(layers, pair_loss)
    assert set(terms) == {ESE_TOTAL, PRIOR, DISTILL_PRIOR} and all(torch.isfinite(value) for value in terms.values())
    terms[ESE_TOTAL].backward(retain_graph=True)
    blocks = model.encoder.layer
    assert all(any(p.grad is not None and p.grad.abs().sum() > 0 for p in blocks[i].parameters()) for i in range(5))
    assert all(p.grad is None for p in blocks[5].parameters())

    teacher_only = ESELoss(espresso(compression_size=128, prior_layers_weight=0.0), num_layers=6, hidden_size=384)
    terms = teacher_only(layers, pair_loss)
    assert set(terms) == {ESE_TOTAL, LAST_COMPRESSED, DISTILL_LAST}
    terms[ESE_TOTAL].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in blocks[5].parameters())
