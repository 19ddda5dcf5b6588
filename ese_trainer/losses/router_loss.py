"""The MoE encoder's router terms, averaged over its MoE layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ese_trainer.losses.load_balancing import router_z_loss, switch_balance_loss

ROUTER_BALANCE = "loss_router_aux"
ROUTER_Z = "loss_router_z"


class RouterLoss(nn.Module):
    """``aux_weight · loss_router_aux + z_weight · loss_router_z`` over the MoE layers of one batch::

        loss_router_aux = mean_layers switch_balance_loss(z_ℓ, top_k)
        loss_router_z   = mean_layers router_z_loss(z_ℓ)

    ``z_ℓ`` are layer ℓ's router logits of the batch's real (non-padding) tokens; layers that routed no token are
    skipped. ``forward`` returns the unweighted terms by name; :meth:`combine` their weighted sum.

    Args:
        top_k: experts per token.
        aux_weight: weight of the load-balancing term (the config's ``router_aux_loss_coef``).
        z_weight: weight of the z-loss (``router_z_loss_coef``).

    References:
        Fedus et al., *Switch Transformers*, 2022; Zoph et al., *ST-MoE*, 2022.
    """

    def __init__(self, top_k: int, aux_weight: float, z_weight: float) -> None:
        super().__init__()
        self.top_k, self.weights = top_k, {ROUTER_BALANCE: aux_weight, ROUTER_Z: z_weight}

    def forward(self, router_logits: tuple[Tensor, ...]) -> dict[str, Tensor]:
        routed = [logits for logits in router_logits if logits.shape[0]]
        if not routed:
            zero = router_logits[0].new_zeros((), dtype=torch.float32)
            return {ROUTER_BALANCE: zero, ROUTER_Z: zero}
        return {ROUTER_BALANCE: torch.stack([switch_balance_loss(z, self.top_k) for z in routed]).mean(),
                ROUTER_Z: torch.stack([router_z_loss(z) for z in routed]).mean()}

    def combine(self, terms: dict[str, Tensor]) -> Tensor:
        return sum(self.weights[name] * value for name, value in terms.items())
