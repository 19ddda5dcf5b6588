"""ESE: Espresso Sentence Embeddings' layer and compression terms (Li et al., arXiv 2402.14776) and settings."""

# The parts (layer weights, compression targets, distillation, Starbucks slices, the terms as pure functions) live
# in the submodules.

from ese_trainer.ese.layer_weights import LAYER_WEIGHTINGS
from ese_trainer.ese.loss import ESE_TOTAL, ESELoss
from ese_trainer.ese.settings import COMPRESSION_TARGETS, ESESettings

__all__ = ["COMPRESSION_TARGETS", "ESE_TOTAL", "LAYER_WEIGHTINGS", "ESELoss", "ESESettings"]
