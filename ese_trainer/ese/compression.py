"""Compression targets ``t_ℓ`` (``B x k``) toward which ESE distils the first ``k`` dims of a layer's embedding.

Two targets, both stop-gradient with respect to the encoder:

- :func:`pca_target`: the paper's "PCA-like" target (Li et al., ESE, arXiv 2402.14776, §3.2), recomputed from
  each batch by an exact SVD, with deterministic singular-vector signs.
- :class:`MoECompressionHead`: a learned target, the design of the original ESE research code (per layer, a
  mixture of ``hidden → m → k`` experts with a top-k gate), trained as an autoencoder bottleneck on the
  detached embeddings so that it cannot collapse onto the student (see its docstring).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

from ese_trainer.losses.load_balancing import switch_balance_loss


def svd_flip_columns(u: Tensor) -> Tensor:
    """Flip the sign of each column of ``u`` (``... x D x k``) so that its largest-``|value|`` entry is positive.

    scikit-learn's ``svd_flip(u, v, u_based_decision=True)`` convention. Singular vectors are only defined up to
    sign, and LAPACK/cuSOLVER pick one arbitrarily; without this the target's dimensions could change sign from
    one step to the next and distilling toward them would be noise.
    """
    rows = u.abs().argmax(dim=-2, keepdim=True)
    signs = torch.sign(torch.gather(u, -2, rows))
    return u * torch.where(signs == 0, torch.ones_like(signs), signs)


def pca_target(embeddings: Tensor, k: int) -> Tensor:
    """The paper's PCA-like compression target of ``m`` (``B x D``, or ``... x B x D`` for a stack of layers).

    ``A = softmax(mᵀm / √D)`` (``D x D``, row-wise softmax), ``A = U S Vᵀ`` (exact ``torch.linalg.svd``),
    target ``= m · U_k · diag(S_k)`` (``B x k``), with each column of ``U_k`` sign-fixed by
    :func:`svd_flip_columns`. ``mᵀm`` sums over the rows, so the target of a permuted batch is the permuted
    target.

    Computed in float32 (autocast disabled) on the detached input under ``no_grad``: it is a *target*. Letting
    gradients flow through the SVD would be numerically unstable (its backward divides by ``σ_i² − σ_j²``,
    unbounded for close singular values) and would let the optimiser move the target toward the student instead
    of the student toward the target. The exact SVD (not ``svd_lowrank``, which is randomised) costs
    ``O(D³)`` per layer; a stack of layers (leading dims) runs as one batched SVD. Returns float32.
    """
    with torch.no_grad(), torch.autocast(device_type=embeddings.device.type, enabled=False):
        return embeddings.detach().float() @ pca_projection(embeddings, k)


def pca_projection(embeddings: Tensor, k: int) -> Tensor:
    """``U_k · diag(S_k)`` (``D x k``, or ``... x D x k``) of :func:`pca_target`: the target is ``m`` times it.

    Kept apart so that a projection can be reused for a few steps (``ese.pca_refresh_steps``) instead of one SVD
    per layer and step.
    """
    if embeddings.dim() < 2:
        raise ValueError(f"expected B x D embeddings, got shape {tuple(embeddings.shape)}")
    dim = embeddings.shape[-1]
    if not 1 <= k < dim:
        raise ValueError(f"k={k} must be in 1..D-1 (D={dim})")
    with torch.no_grad(), torch.autocast(device_type=embeddings.device.type, enabled=False):
        m = embeddings.detach().float()
        attention = torch.softmax(m.mT @ m / math.sqrt(dim), dim=-1)
        u, s, _ = torch.linalg.svd(attention, full_matrices=False)
        return svd_flip_columns(u[..., :k]) * s[..., None, :k]


class CompressionOutput(NamedTuple):
    """What :class:`MoECompressionHead` returns for ``B`` embeddings.

    ``target`` (``B x k``, detached), ``router_logits`` (``B x E``), ``reconstruction_loss`` and
    ``load_balancing_loss`` (scalars; they train only the head).
    """

    target: Tensor
    router_logits: Tensor
    reconstruction_loss: Tensor
    load_balancing_loss: Tensor


class MoECompressionHead(nn.Module):
    """A learned compression target for one layer: top-k mixture of experts ``hidden → m → k`` + linear decoder.

    ``E`` experts ``Linear(hidden, m) → GELU → Linear(m, k)``, a linear gate ``hidden → E`` and top-k routing
    (the original ESE research code's head), with these anti-collapse choices:

    - **Reads the detached embedding** ``x = sg(e)``: the head never changes the encoder.
    - **Autoencoder bottleneck**: ``code = Σ_{e ∈ topk(x)} g_e(x) · expert_e(x)`` with the top-k gate
      probabilities renormalised to sum to 1, and a linear decoder ``k → hidden`` with a bias;
      ``reconstruction_loss = MSE(decoder(code), x) / Var(x)``, a generalisation of PCA (the optimal *linear*
      encoder of this objective). ``Var(x)`` is the batch's per-dim variance averaged over dims (detached; the
      mean square of ``x`` for a batch of one), so the loss is the fraction of variance unexplained: 0 is
      perfect, 1 is no better than the batch mean, PCA scores 1 − its explained-variance ratio. Same minimiser
      as the plain MSE, but independent of the layer's and the model's embedding scale, so one balancing weight
      fits every layer.
    - **Orthonormal decoder columns** (``torch.nn.utils.parametrizations.orthogonal``) pin the code's scale:
      the code ≈ coordinates of ``x − bias`` in a k-dim subspace, as PCA's are. Otherwise the code could shrink
      by ``c`` while the decoder grows by ``1/c`` at equal reconstruction loss, and the distillation target's
      scale would drift. With a linear decoder the best reconstruction is still the projection onto the top-k
      principal subspace of the centred embeddings, so the head converges toward PCA coordinates (up to a
      rotation of the code); what it adds over :func:`pca_target` is a target fitted to the training stream
      rather than one batch, moving smoothly between steps, with no ``O(D³)`` SVD per step.
    - **Detached target**: ``target = sg(code)``, so the distillation term cannot pull the head toward the
      student (which would collapse the target onto whatever the student already outputs).
    - **Load balancing**: :func:`~ese_trainer.losses.load_balancing.switch_balance_loss` ``E · Σ_e f_e · P_e``
      over the batch keeps the router from sending everything to one expert. On a toy problem (4 experts, top-2) a
      weight of 0.01 on it let two experts die within 300 Adam steps; 0.1 kept the four at ~25% each (the default
      ``head_balance_weight`` of :class:`~ese_trainer.ese.settings.ESESettings`).

    Routing is batched: every expert runs on every row (``B`` pooled sentences, not tokens, so this is cheap) and
    a dense ``B x E`` weight matrix, zero outside each row's top-k, mixes them. Every parameter is therefore in
    every graph (no ``find_unused_parameters`` under DDP). With ``top_k=1`` the renormalised weight is always 1,
    so the gate learns from the load-balancing loss only.
    """

    def __init__(self, hidden_size: int, k: int, num_experts: int = 4, expert_hidden: int = 512, top_k: int = 2):
        super().__init__()
        if not 1 <= k < hidden_size:
            raise ValueError(f"k={k} must be in 1..hidden_size-1 (hidden_size={hidden_size})")
        if num_experts < 1 or expert_hidden < 1:
            raise ValueError(f"num_experts ({num_experts}) and expert_hidden ({expert_hidden}) must be >= 1")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be in 1..num_experts ({num_experts})")
        self.hidden_size, self.k, self.num_experts, self.top_k = hidden_size, k, num_experts, top_k
        self.gate = nn.Linear(hidden_size, num_experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden_size, expert_hidden), nn.GELU(), nn.Linear(expert_hidden, k))
            for _ in range(num_experts)
        )
        self.decoder = orthogonal(nn.Linear(k, hidden_size))
        # The parametrization keeps its base as a transposed view; checkpoints (safetensors) need it contiguous.
        parametrization = self.decoder.parametrizations.weight[0]
        parametrization.base = parametrization.base.contiguous()

    def forward(self, embeddings: Tensor) -> CompressionOutput:
        """``embeddings`` ``B x hidden`` (read detached) → :class:`CompressionOutput`."""
        if embeddings.dim() != 2 or embeddings.shape[-1] != self.hidden_size:
            raise ValueError(f"expected B x {self.hidden_size} embeddings, got shape {tuple(embeddings.shape)}")
        x = embeddings.detach().to(self.gate.weight.dtype)
        router_logits = self.gate(x)
        probabilities = torch.softmax(router_logits.float(), dim=-1)
        top_probabilities, top_indices = probabilities.topk(self.top_k, dim=-1)
        top_weights = top_probabilities / top_probabilities.sum(dim=-1, keepdim=True)
        routing = torch.zeros_like(probabilities).scatter(-1, top_indices, top_weights)  # B x E
        expert_codes = torch.stack([expert(x) for expert in self.experts], dim=1)  # B x E x k
        code = (routing.unsqueeze(-1) * expert_codes.float()).sum(dim=1)
        reconstruction = self.decoder(code.to(x.dtype)).float()
        x32 = x.float()
        scale = x32.var(dim=0, unbiased=False).mean() if x.shape[0] > 1 else x32.square().mean()
        return CompressionOutput(
            target=code.detach(),
            router_logits=router_logits,
            reconstruction_loss=F.mse_loss(reconstruction, x32) / scale.clamp_min(1e-12),
            load_balancing_loss=switch_balance_loss(router_logits, self.top_k),
        )
