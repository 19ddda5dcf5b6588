"""Losses: one per file (sentence-transformers' ``losses/`` layout), composites returning named terms."""

from ese_trainer.losses.angle import angle_loss, angle_similarity
from ese_trainer.losses.cosent import cosent_loss, ranking_loss
from ese_trainer.losses.in_batch_negatives import in_batch_negative_loss
from ese_trainer.losses.load_balancing import expert_shares, router_z_loss, switch_balance_loss
from ese_trainer.losses.pair_loss import PAIR_TERMS, PairLoss, Pairs, PairTerm
from ese_trainer.losses.router_loss import RouterLoss

__all__ = [
    "PAIR_TERMS",
    "PairLoss",
    "PairTerm",
    "Pairs",
    "RouterLoss",
    "angle_loss",
    "angle_similarity",
    "cosent_loss",
    "expert_shares",
    "in_batch_negative_loss",
    "ranking_loss",
    "router_z_loss",
    "switch_balance_loss",
]
