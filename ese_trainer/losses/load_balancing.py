"""Router losses of a mixture of experts: Switch load balancing and the ST-MoE z-loss.

One function each, for one set of router logits (``N x E``: N routed tokens or sentences, E experts); the MoE
encoder's routers (:class:`~ese_trainer.losses.router_loss.RouterLoss`) and ESE's learned compression heads
(:class:`~ese_trainer.ese.compression.MoECompressionHead`) both use them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def expert_shares(router_logits: Tensor, top_k: int) -> Tensor:
    """``f_e``: the fraction of the ``N · top_k`` top-k assignments that go to each expert (``E``, sums to 1;
    not differentiable)."""
    selected = router_logits.detach().topk(top_k, dim=-1).indices
    return torch.bincount(selected.reshape(-1), minlength=router_logits.shape[-1]).float() / selected.numel()


def switch_balance_loss(router_logits: Tensor, top_k: int) -> Tensor:
    """Switch-Transformer load balancing for top-k routing::

        L = E · Σ_e f_e · P_e

    ``f_e`` (:func:`expert_shares`) is the share of assignments of expert e, ``P_e`` its mean router probability
    (differentiable). 1 for perfectly uniform routing; it grows as the router concentrates its probability and its
    assignments on the same experts.

    Args:
        router_logits: ``N x E`` logits (N ≥ 1).
        top_k: experts chosen per row.

    References:
        Fedus, Zoph & Shazeer, *Switch Transformers*, JMLR 2022, eq. 4 (top-1; here the shares count top-k).
    """
    probabilities = F.softmax(router_logits.float(), dim=-1)
    shares = expert_shares(probabilities, top_k)  # top-k of the probabilities = top-k of the logits
    return router_logits.shape[-1] * (shares * probabilities.mean(dim=0)).sum()


def router_z_loss(router_logits: Tensor) -> Tensor:
    """ST-MoE router z-loss ``mean_rows (log Σ_e exp z_e)²``: keeps the router logits small (stable softmax).

    References:
        Zoph et al., *ST-MoE: Designing Stable and Transferable Sparse Expert Models*, arXiv 2202.08906, eq. 5.
    """
    return torch.logsumexp(router_logits.float(), dim=-1).pow(2).mean()
