"""What the Trainer trains: the sentence encoder and the objective, one module."""

from __future__ import annotations

from torch import Tensor, nn

from ese_trainer.losses import RowBatch
from ese_trainer.modeling.encoding import MODEL_INPUT_KEYS, SentenceEncoder
from ese_trainer.training.objective import EmbeddingObjective, ObjectiveOutput


class TrainingModel(nn.Module):
    """``encoder`` + ``objective``: a batch of rows in, :class:`~ese_trainer.training.objective.ObjectiveOutput` out.

    One module, so that everything trainable — the encoder and any head the objective owns (ESE's learned targets)
    — is in the Trainer's optimizer, wrapped by DDP/FSDP, cleared by ``zero_grad`` and saved in every checkpoint.
    The released model is ``encoder.transformer`` alone.
    """

    def __init__(self, encoder: SentenceEncoder, objective: EmbeddingObjective) -> None:
        super().__init__()
        encoder.pooled_layers = objective.student_layers
        self.encoder, self.objective = encoder, objective

    @property
    def config(self):
        return self.encoder.transformer.config

    @property
    def _no_split_modules(self) -> list[str]:
        """The encoder's units that must not be split (its layers, dense or MoE): FSDP's transformer wrapping policy
        (accelerate, without ``fsdp_transformer_layer_cls_to_wrap``) shards each of them on its own."""
        return list(getattr(self.encoder.transformer, "_no_split_modules", None) or [])

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.encoder.transformer.gradient_checkpointing_enable(gradient_checkpointing_kwargs)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, other_row: Tensor, other_role: Tensor,
                other_score: Tensor, token_type_ids: Tensor | None = None, text_ids: Tensor | None = None,
                guide_embeddings: Tensor | None = None, source: Tensor | None = None,
                return_loss: bool = True) -> ObjectiveOutput:
        features = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        encoded = self.encoder({key: features[key] for key in MODEL_INPUT_KEYS if features[key] is not None})
        return self.objective(encoded, row_batch(encoded.embeddings, other_row, other_role, other_score, text_ids,
                                                 guide_embeddings, source))


def row_batch(embeddings: Tensor, other_row: Tensor, other_role: Tensor, other_score: Tensor,
              text_ids: Tensor | None = None, guide: Tensor | None = None, source: Tensor | None = None) -> RowBatch:
    """A collated batch's layout (:class:`~ese_trainer.data.collator.RowCollator`) around its embeddings, on their
    device, and the training source its rows come from."""
    device = embeddings.device
    return RowBatch(embeddings, other_row.to(device), other_role.to(device), other_score.to(device),
                    None if text_ids is None else text_ids.to(device),
                    None if guide is None else guide.to(device), None if source is None else int(source))
