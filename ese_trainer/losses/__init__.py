"""Losses: one per file (sentence-transformers' ``losses/`` layout), composites returning named terms."""

from ese_trainer.losses.angle import angle_loss, angle_similarity
from ese_trainer.losses.combined_loss import LOSS_TERMS, CombinedLoss, LossSettings, LossTerm
from ese_trainer.losses.cosent import cosent_loss, ranking_loss
from ese_trainer.losses.hinge import hardest_negative_hinge_loss
from ese_trainer.losses.in_batch_negatives import InBatchCandidates, InBatchSettings, in_batch_negatives_loss
from ese_trainer.losses.load_balancing import expert_shares, router_z_loss, switch_balance_loss
from ese_trainer.losses.router_loss import RouterLoss
from ese_trainer.losses.row_batch import RowBatch

__all__ = [
    "LOSS_TERMS",
    "CombinedLoss",
    "InBatchCandidates",
    "InBatchSettings",
    "LossSettings",
    "LossTerm",
    "RouterLoss",
    "RowBatch",
    "angle_loss",
    "angle_similarity",
    "cosent_loss",
    "expert_shares",
    "hardest_negative_hinge_loss",
    "in_batch_negatives_loss",
    "ranking_loss",
    "router_z_loss",
    "switch_balance_loss",
]
