"""Router losses of a mixture of experts: Switch load balancing and the ST-MoE z-loss.

One function each, for one set of router logits (``N x E``: N routed tokens or sentences, E experts); the MoE
encoder's routers (:class:`~ese_trainer.losses.router_loss.RouterLoss`) and ESE's learned compression heads
(:class:`~ese_trainer.ese.compression.MoECompressionHead`) both use them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def expert_shares(router_logits: Tensor, top_k: int) -> Tensor:
    """``f_e``: the fraction of the ``N · top_k`` top-k assignments that go to each expert (``E``, sums to 1;
    not differentiable)."""
    selected = router_logits.detach().topk(top_k, dim=-1).indices
    return torch.bincount(selected.reshape(-1), minlength=router_logits.shape[-1]).float() / selected.numel()


DEAD_SHARE_OF_BALANCED = 0.1  # an expert below a tenth of the balanced share 1/E counts as dead


def dead_experts(shares: Sequence[float]) -> list[int]:
    """The experts of one layer whose share of the top-k assignments (:func:`expert_shares`, over a logging window) is
    below ``DEAD_SHARE_OF_BALANCED / E``: for 4 experts under 2.5%, for 8 under 1.25% (balanced: 25%, 12.5%).

    A share of exactly 0 is the usual meaning; the threshold also counts an expert the router has all but abandoned:
    it sees too few tokens for its weights to learn, and is dead weight in the model.
    """
    threshold = DEAD_SHARE_OF_BALANCED / len(shares)
    return [expert for expert, share in enumerate(shares) if share < threshold]


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
