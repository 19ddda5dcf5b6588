"""ESE (Espresso Sentence Embeddings; Li et al., arXiv 2402.14776, ICLR 2025) training terms.

An encoder with ``n`` transformer layers is trained so that (i) the first ``k`` dims of an embedding work on their
own (compression) and (ii) earlier layers already give usable embeddings (layer learning). Notation: ``e_ℓ`` is
the pooled embedding of ``hidden_states[ℓ]`` for every text of the batch (``N x D``: the rows' anchors and their
other texts); ``e_ℓ^k`` its first ``k`` dims; ``L_sim`` the trainer's combined loss (CoSENT/ibn/AnglE/hinge) of the
batch's rows with ``N x d`` embeddings; ``t_ℓ = sg(target(e_ℓ))`` the stop-gradient compression target (``N x k``,
default :func:`~ese_trainer.ese.compression.pca_target`); ``L_dist(s, t) = MSE(s, t) + τ²·KL(softmax(t/τ) ‖
softmax(s/τ))`` (:func:`~ese_trainer.ese.distillation.distillation_loss`) on the first ``k`` dims; students
``ℓ ∈ S ⊆ {1..n−1}`` with weights ``w_ℓ`` (:func:`~ese_trainer.ese.layer_weights.layer_weights`)::

    loss_ese_last_compressed = L_sim(e_n^k)
    loss_ese_distill_last    = L_dist(e_n^k, t_n)
    loss_ese_prior           = Σ_{ℓ∈S} w_ℓ [L_sim(e_ℓ) + L_sim(e_ℓ^k)] / Σ_{ℓ∈S} w_ℓ
    loss_ese_distill_prior   = Σ_{ℓ∈S} w_ℓ L_dist(e_ℓ^k, t_ℓ) / Σ_{ℓ∈S} w_ℓ

    L_ESE = λ_last · (loss_ese_last_compressed + loss_ese_distill_last)
          + λ_prior · (loss_ese_prior + loss_ese_distill_prior)

The full last-layer term ``L_sim(e_n)`` is the trainer's main loss and is not part of these terms. The prior
terms are normalised by ``Σ w_ℓ`` so the depth of the model does not change their scale; they are absent for a
single-layer model or ``λ_prior = 0`` (the last-layer terms likewise for ``λ_last = 0``). With a learned target
(:class:`~ese_trainer.ese.compression.MoECompressionHead`) two head-only terms are added, each the mean over the
distilled layers: ``loss_ese_head_reconstruction`` and ``loss_ese_head_balance`` (weight ``head_balance_weight``).

Known defects of AnglE's ``AngleESETrainer`` and what we do instead:

(a) Its student loop runs over ``hidden_states[0..n−2]``: it trains the embedding-layer output (not a
    transformer layer; its "embedding" is a bag of word vectors) as a student and never the last-but-one layer.
    We use the transformer layers ``1..n−1`` — the same layers the layer x dimension evaluation reports, so what
    is trained is what is measured. Layer 0 raises.
(b) Its KL term is scaled by ``T``; Hinton et al. (2015) scale by ``T²`` because the softened KL's gradient
    shrinks as ``1/T²``, so with ``T`` the term's effect fades as ``T`` grows. We scale by ``τ²``.
(c) Its teacher alignment term (``teacher_name_or_path``: the last layer distilled toward an external teacher
    model) is computed *and added to the loss* inside ``torch.no_grad()``, so it is a constant and no gradient
    from it reaches the last layer. (In the versions we read, its in-model teacher terms — the pair loss of the
    last layer's first k dims and their PCA distillation — do keep their gradients; only ``pca_compress`` is
    ``no_grad``, which is right for a target.) Our rule: every teacher term keeps its gradient with respect to
    the embedding it trains — ``L_sim(e_n^k)`` and ``L_dist(e_n^k, t_n)`` reach ``e_n[:, :k]`` (tested) — and
    only the target ``t`` is a stop-gradient (a target that moved toward the student would make the distillation
    vacuous).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from ese_trainer.ese.compression import CompressionOutput, MoECompressionHead, pca_projection, pca_target
from ese_trainer.ese.distillation import distillation_loss
from ese_trainer.ese.layer_weights import LAYER_WEIGHTINGS, layer_weights
from ese_trainer.ese.settings import ESESettings
from ese_trainer.ese.starbucks import (
    STARBUCKS,
    STARBUCKS_DISTILL,
    STARBUCKS_SIMILARITY,
    draw_slices,
    ladder_slices,
    slice_weights,
    starbucks_terms,
    trained_slices,
)

LAST_COMPRESSED = "loss_ese_last_compressed"
DISTILL_LAST = "loss_ese_distill_last"
PRIOR = "loss_ese_prior"
DISTILL_PRIOR = "loss_ese_distill_prior"
HEAD_RECONSTRUCTION = "loss_ese_head_reconstruction"
HEAD_BALANCE = "loss_ese_head_balance"
ESE_TOTAL = "loss_ese"

PairLoss = Callable[[Tensor], Tensor]  # the trainer's loss of N x d embeddings of the batch's texts (rows bound in)
TargetFn = Callable[[int, Tensor], "Tensor | CompressionOutput"]


def _check_inputs(layer_embeddings: Mapping[int, Tensor], num_layers: int, compression_size: int,
                  kl_temperature: float) -> None:
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if not layer_embeddings:
        raise ValueError("layer_embeddings is empty")
    if not (kl_temperature > 0 and math.isfinite(kl_temperature)):
        raise ValueError(f"kl_temperature must be a finite number > 0, got {kl_temperature}")
    for layer, embeddings in layer_embeddings.items():
        if layer == 0:
            raise ValueError("layer 0 is hidden_states[0], the embedding-layer output, not a transformer layer; "
                             f"ESE layers are 1..{num_layers}")
        if not 1 <= layer <= num_layers:
            raise ValueError(f"layer {layer} outside 1..{num_layers} (num_layers={num_layers})")
        if not isinstance(embeddings, Tensor) or embeddings.dim() != 2:
            raise ValueError(f"layer {layer}: expected the N x D embeddings of the batch's texts, got "
                             f"{tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings)}")
        dim = embeddings.shape[-1]
        if not 1 <= compression_size < dim:
            raise ValueError(f"compression_size={compression_size} must be in 1..D-1 (D={dim}, layer {layer}): "
                             "k >= D leaves nothing to compress")


def _compression_targets(stacked: dict[int, Tensor], k: int,
                         targets: TargetFn | None) -> tuple[dict[int, Tensor], list[CompressionOutput]]:
    """``t_ℓ`` (detached) for every layer in ``stacked``, and the head outputs when the target is learned."""
    if not stacked:
        return {}, []
    if targets is None:
        shapes = {tensor.shape for tensor in stacked.values()}
        if len(shapes) == 1:  # one batched SVD for all layers
            batched = pca_target(torch.stack(list(stacked.values())), k)
            return dict(zip(stacked, batched.unbind(0))), []
        return {layer: pca_target(tensor, k) for layer, tensor in stacked.items()}, []
    target_of, head_outputs = {}, []
    for layer, tensor in stacked.items():
        output = targets(layer, tensor)
        if isinstance(output, CompressionOutput):
            head_outputs.append(output)
            output = output.target
        if output.shape != (tensor.shape[0], k):
            raise ValueError(f"layer {layer}: the target must be {tensor.shape[0]} x {k}, got {tuple(output.shape)}")
        target_of[layer] = output.detach()
    return target_of, head_outputs


def _distill(student: Tensor, target: Tensor, temperature: float) -> Tensor:
    parts = distillation_loss(student, target, temperature)
    return parts["mse"] + parts["kl"]


def ese_terms(
    layer_embeddings: Mapping[int, Tensor],
    num_layers: int,
    pair_loss: PairLoss,
    compression_size: int,
    kl_temperature: float,
    layer_weighting: str = "log",
    last_layer_weight: float = 1.0,
    prior_layers_weight: float = 1.0,
    targets: TargetFn | None = None,
) -> dict[str, Tensor]:
    """The unweighted ESE terms (module docstring), keyed by their log name.

    ``layer_embeddings`` maps a transformer layer ``ℓ ∈ 1..n`` (``hidden_states[ℓ]``) to the pooled embeddings
    of every text of the batch (``N x D``); layer ``n`` is the teacher and every other key a student.
    ``pair_loss(embeddings)`` is the trainer's combined loss of the batch's rows with those embeddings.
    ``targets(ℓ, N x D) -> N x k`` (or a :class:`CompressionOutput`) replaces :func:`pca_target`; its result is
    always detached.
    """
    if layer_weighting not in LAYER_WEIGHTINGS:
        raise ValueError(f"unknown layer weighting {layer_weighting!r}; choose one of {', '.join(LAYER_WEIGHTINGS)}")
    _check_inputs(layer_embeddings, num_layers, compression_size, kl_temperature)
    k = compression_size
    use_last = last_layer_weight != 0
    if use_last and num_layers not in layer_embeddings:
        raise ValueError(f"the last layer ({num_layers}) is missing from layer_embeddings (layers "
                         f"{sorted(layer_embeddings)}); it is needed with last_layer_weight != 0")
    students = sorted(layer for layer in layer_embeddings if layer != num_layers) if prior_layers_weight != 0 else []
    weights = layer_weights(students, layer_weighting, num_layers)
    distilled = ([num_layers] if use_last else []) + students
    stacked = {layer: layer_embeddings[layer] for layer in distilled}
    target_of, head_outputs = _compression_targets(stacked, k, targets)

    terms: dict[str, Tensor] = {}
    if use_last:
        terms[LAST_COMPRESSED] = pair_loss(layer_embeddings[num_layers][:, :k])
        terms[DISTILL_LAST] = _distill(stacked[num_layers][:, :k], target_of[num_layers], kl_temperature)
    if students:
        total_weight = sum(weights.values())
        prior, distill_prior = [], []
        for layer in students:
            embeddings = layer_embeddings[layer]
            prior.append(weights[layer] * (pair_loss(embeddings) + pair_loss(embeddings[:, :k])))
            distill_prior.append(weights[layer] * _distill(stacked[layer][:, :k], target_of[layer], kl_temperature))
        terms[PRIOR] = torch.stack(prior).sum() / total_weight
        terms[DISTILL_PRIOR] = torch.stack(distill_prior).sum() / total_weight
    if head_outputs:
        terms[HEAD_RECONSTRUCTION] = torch.stack([output.reconstruction_loss for output in head_outputs]).mean()
        terms[HEAD_BALANCE] = torch.stack([output.load_balancing_loss for output in head_outputs]).mean()
    return terms


def combine_ese_terms(terms: Mapping[str, Tensor], last_layer_weight: float, prior_layers_weight: float,
                      head_balance_weight: float = 0.1) -> Tensor:
    """``λ_last·(last_compressed + distill_last) + λ_prior·(prior + distill_prior)`` over the terms present.

    With a learned target, ``loss_ese_head_reconstruction + head_balance_weight · loss_ese_head_balance`` is added
    (Switch used ``α = 0.01`` beside an LM loss of a few nats; our reconstruction loss is a fraction of variance
    in [0, 1], and 0.01 let experts die, see :class:`MoECompressionHead`). These depend on the heads' parameters
    only (their input is detached), so they do not change the encoder's gradient. Returns a 0-dim zero when no
    term is present.
    """
    parts = []
    if LAST_COMPRESSED in terms:
        parts.append(last_layer_weight * (terms[LAST_COMPRESSED] + terms[DISTILL_LAST]))
    if PRIOR in terms:
        parts.append(prior_layers_weight * (terms[PRIOR] + terms[DISTILL_PRIOR]))
    if HEAD_RECONSTRUCTION in terms:
        parts.append(terms[HEAD_RECONSTRUCTION] + head_balance_weight * terms[HEAD_BALANCE])
    return torch.stack(parts).sum() if parts else torch.zeros(())


class ESELoss(nn.Module):
    """The ESE terms of one batch with their settings, owning the learned target heads (``compression_target:
    moe``), so that whoever trains this module trains, synchronises, clears and checkpoints the heads too.

    Students are the transformer layers ``1..n−1`` (none when ``prior_layers_weight == 0``); :attr:`layers` is
    what the caller must pool (``hidden_states[ℓ]``, ``ℓ`` in it; the last layer ``n`` is the teacher).
    ``forward(layer_embeddings, pair_loss)`` returns :func:`ese_terms` plus ``loss_ese``, their weighted sum
    (:func:`combine_ese_terms`), and keeps the heads' router logits of the batch in :attr:`head_router_logits`
    (for utilisation statistics).

    Args:
        settings: :class:`~ese_trainer.ese.settings.ESESettings`.
        num_layers: ``n``, the encoder's transformer layers.
        hidden_size: the encoder's embedding size (``compression_size`` must be below it).

    References:
        Li et al., *ESE: Espresso Sentence Embeddings*, ICLR 2025, arXiv 2402.14776.

    Relations:
        sentence-transformers' ``AdaptiveLayerLoss`` trains prior layers with the full loss and a KL toward the last
        layer, counting the embedding output as layer 0 and scaling the KL by τ, not τ²; ``Matryoshka2dLoss``
        (2DMSE) samples one random layer and dims per step. Here every student layer and the leading ``k`` dims are
        trained every step, with the distillation toward a compression target of the same layer.
    """

    def __init__(self, settings: ESESettings, num_layers: int, hidden_size: int) -> None:
        super().__init__()
        settings.check_model(hidden_size)
        self.settings, self.num_layers, self.hidden_size = settings, num_layers, hidden_size
        self.slices: list[tuple[int, int]] = []
        self.slice_weights: dict[tuple[int, int], float] = {}
        if settings.schedule == "starbucks":
            self.slices = ladder_slices(settings.starbucks_pairs, settings.starbucks_ladder, num_layers, hidden_size)
            self.slice_weights = slice_weights(settings.starbucks_weights,
                                               trained_slices(self.slices, num_layers, hidden_size), num_layers)
            self.layers = sorted({layer for layer, _ in self.slices} | {num_layers})
            self.student_layers = [layer for layer in self.layers if layer != num_layers]
        else:
            self.student_layers = list(range(1, num_layers)) if settings.prior_layers_weight else []
            self.layers = self.student_layers + ([num_layers] if settings.last_layer_weight else [])
        self.heads = nn.ModuleDict()
        if settings.compression_target == "moe" and settings.schedule == "espresso":
            for layer in self.layers:
                self.heads[str(layer)] = MoECompressionHead(hidden_size, settings.compression_size,
                                                            settings.head_num_experts, settings.head_expert_hidden,
                                                            settings.head_top_k)
        self.head_router_logits: dict[int, Tensor] = {}
        # PCA projections reused between refreshes, one per distilled layer, and the training forwards counted:
        # buffers, so that checkpoints carry them and a resumed run reuses what the interrupted one computed.
        self.register_buffer("forwards", torch.zeros((), dtype=torch.long))
        self.pca_layers = {layer: dim for layer, dim in self._pca_sizes(hidden_size).items()}
        for layer, dim in self.pca_layers.items():
            self.register_buffer(f"pca_projection_{layer}", torch.zeros(hidden_size, dim))
            self.register_buffer(f"pca_ready_{layer}", torch.zeros((), dtype=torch.bool))

    @property
    def dev_slices(self) -> list[tuple[int, int]]:
        """Every (layer, dims) slice this run trains, small to large, the full one ``(n, D)`` included (the trainer's
        main loss): schedule starbucks, its ladder; espresso, ``(ℓ, D)`` and ``(ℓ, k)`` of every student layer and
        ``(n, k)`` with ``λ_last > 0`` (the cells the module docstring's ``L_sim`` terms train). What the dev
        evaluation scores one by one (:class:`~ese_trainer.evaluation.slice_score.SliceSpearman`)."""
        full = (self.num_layers, self.hidden_size)
        if self.slices:
            return sorted({*self.slices, full})
        k = self.settings.compression_size
        cells = {full, (self.num_layers, k)} if self.settings.last_layer_weight else {full}
        for layer in self.student_layers:
            cells |= {(layer, k), (layer, self.hidden_size)}
        return sorted(cells)

    def _head_target(self, layer: int, embeddings: Tensor) -> CompressionOutput:
        output = self.heads[str(layer)](embeddings)
        self.head_router_logits[layer] = output.router_logits
        return output

    def _pca_sizes(self, hidden_size: int) -> dict[int, int]:
        """The dims of each layer's cached PCA projection: the largest target it is distilled toward."""
        if self.settings.schedule == "starbucks":
            sizes: dict[int, int] = {}
            for layer, dim in self.slices:
                if dim < hidden_size:
                    sizes[layer] = max(sizes.get(layer, 0), dim)
            return sizes
        if self.settings.compression_target == "pca":
            return {layer: self.settings.compression_size for layer in self.layers}
        return {}

    def _pca_target(self, layer: int, embeddings: Tensor, k: int) -> Tensor:
        """PCA target of ``embeddings`` with the layer's projection, refreshed every ``pca_refresh_steps``."""
        projection, ready = getattr(self, f"pca_projection_{layer}"), getattr(self, f"pca_ready_{layer}")
        if not ready or int(self.forwards) % self.settings.pca_refresh_steps == 0:
            dims = projection.shape[1]
            projection.copy_(pca_projection(embeddings, dims)[:, :dims])
            ready.fill_(True)
        return embeddings.detach().float() @ projection[:, :k].to(embeddings.device)

    def _starbucks(self, selected: Mapping[int, Tensor], pair_loss: PairLoss) -> dict[str, Tensor]:
        """The Starbucks terms (:mod:`ese_trainer.ese.starbucks`) of this step's slices: all of them, or in training
        with ``starbucks_slices_per_step`` a draw keyed by the training forwards counted so far (a checkpointed
        buffer), scaled to the full ladder's expected loss."""
        settings = self.settings
        trained = list(self.slice_weights)
        slices, scale = trained, 1.0
        if self.training and 0 < settings.starbucks_slices_per_step < len(trained):
            slices = draw_slices(trained, settings.starbucks_slices_per_step, int(self.forwards))
            scale = len(trained) / len(slices)
        terms = starbucks_terms(selected, slices, self.num_layers, pair_loss, settings.starbucks_distill_weight,
                                settings.kl_temperature, self._pca_target, self.slice_weights, scale,
                                settings.starbucks_similarity_weight, settings.starbucks_similarity_temperature)
        if not terms:
            return {}
        total = (terms[STARBUCKS] + settings.starbucks_distill_weight * terms.get(STARBUCKS_DISTILL, 0.0)
                 + settings.starbucks_similarity_weight * terms.get(STARBUCKS_SIMILARITY, 0.0))
        return {ESE_TOTAL: total, **terms}

    def forward(self, layer_embeddings: Mapping[int, Tensor], pair_loss: PairLoss) -> dict[str, Tensor]:
        """The terms of ``layer_embeddings`` (layer → the batch's ``N x D`` embeddings) restricted to :attr:`layers`."""
        missing = [layer for layer in self.layers if layer not in layer_embeddings]
        if missing:
            raise ValueError(f"layer_embeddings lacks layers {missing} (needs {self.layers})")
        if not self.layers:
            return {}
        settings = self.settings
        self.head_router_logits = {}
        if self.training:
            self.forwards += 1
        selected = {layer: layer_embeddings[layer] for layer in self.layers}
        if self.slices:
            return self._starbucks(selected, pair_loss)
        refreshing = settings.pca_refresh_steps > 1 and settings.compression_target == "pca"
        targets = self._head_target if self.heads else (
            (lambda layer, tensor: self._pca_target(layer, tensor, settings.compression_size)) if refreshing else None)
        terms = ese_terms(
            selected, self.num_layers, pair_loss, settings.compression_size, settings.kl_temperature,
            settings.layer_weighting, settings.last_layer_weight, settings.prior_layers_weight, targets=targets,
        )
        total = combine_ese_terms(terms, settings.last_layer_weight, settings.prior_layers_weight,
                                  settings.head_balance_weight)
        return {ESE_TOTAL: total, **terms}
