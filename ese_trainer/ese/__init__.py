"""ESE (Espresso Sentence Embeddings, Li et al., arXiv 2402.14776) training terms as pure functions/modules."""

from ese_trainer.ese.compression import (
    CompressionOutput,
    MoECompressionHead,
    load_balancing_loss,
    pca_target,
    svd_flip_columns,
    utilisation,
)
from ese_trainer.ese.distillation import distillation_loss
from ese_trainer.ese.layer_weights import LAYER_WEIGHTINGS, layer_weights
from ese_trainer.ese.loss import (
    COMPRESSION_TARGETS,
    DISTILL_LAST,
    DISTILL_PRIOR,
    LAST_COMPRESSED,
    MOE_BALANCE,
    MOE_RECONSTRUCTION,
    PRIOR,
    ESELoss,
    combine_ese_terms,
    ese_terms,
)

__all__ = [
    "COMPRESSION_TARGETS",
    "DISTILL_LAST",
    "DISTILL_PRIOR",
    "LAST_COMPRESSED",
    "LAYER_WEIGHTINGS",
    "MOE_BALANCE",
    "MOE_RECONSTRUCTION",
    "PRIOR",
    "CompressionOutput",
    "ESELoss",
    "MoECompressionHead",
    "combine_ese_terms",
    "distillation_loss",
    "ese_terms",
    "layer_weights",
    "load_balancing_loss",
    "pca_target",
    "svd_flip_columns",
    "utilisation",
]
