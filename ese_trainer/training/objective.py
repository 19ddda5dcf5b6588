"""The training objective: one module owning every loss term, so that training it trains all it holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor, nn
from transformers.utils import ModelOutput

from ese_trainer.ese import ESE_TOTAL, ESELoss
from ese_trainer.losses import CombinedLoss, RouterLoss, RowBatch
from ese_trainer.modeling.encoding import EncodedBatch
from ese_trainer.training.distributed import gather_rows

MOE_ROUTING = "moe"
ESE_HEAD_ROUTING = "ese_head"


class ScoredPairs(NamedTuple):
    """The batch's scored pairs ``(anchor, text, score)`` as embeddings (``P x D`` each) and scores (``P``): what the
    dev score reads from an evaluation pass."""

    emb_a: Tensor
    emb_b: Tensor
    scores: Tensor


@dataclass
class ObjectiveOutput(ModelOutput):
    """``loss`` (what is back-propagated), ``terms`` (every named term: the combined loss's and the router terms
    unweighted, ``loss_ese`` the weighted ESE sum and its parts), ``pairs`` (this batch's scored pairs, last-layer
    embeddings), ``layer_pairs`` (in evaluation, the same pairs at each shallower layer the encoder pooled: what the
    ESE slices' dev scores read) and ``routing`` (router logits per routed component, for utilisation statistics:
    ``moe`` = the encoder's MoE layers, ``ese_head`` = ESE's target heads). A ``ModelOutput``, so the Trainer's
    evaluation reads it as a mapping."""

    loss: Tensor | None = None
    terms: dict[str, Tensor] | None = None
    pairs: ScoredPairs | None = None
    layer_pairs: dict[int, ScoredPairs] | None = None
    routing: dict[str, tuple[Tensor, ...]] | None = None


class EmbeddingObjective(nn.Module):
    """``loss = L(e_n) + L_router + L_ESE``, each part optional but the first::

        L        = Σ_t w_t · term_t(e_n)                    (CombinedLoss: CoSENT, in-batch negatives, AnglE, hinge;
                                                             w_t the batch's source's weights)
        L_router = α · loss_router_aux + β · loss_router_z  (RouterLoss, an MoE encoder)
        L_ESE    = loss_ese                                 (ESELoss: layer and compression terms, its heads)

    ``e_n`` are the pooled last-layer embeddings of every text of the batch's rows
    (:class:`~ese_trainer.losses.RowBatch`). Returns an :class:`ObjectiveOutput` whose ``terms`` are logged one by
    one; ``loss`` is exactly the sum above. With ``gather_across_devices`` the combined loss (and ESE's use of it)
    runs over the global batch of every process (:func:`~ese_trainer.training.distributed.gather_rows`). The ESE
    heads (if any) are this module's parameters: train it inside the model the Trainer wraps and its optimizer,
    DDP, gradient clearing and checkpoints cover them.
    """

    def __init__(self, loss: CombinedLoss, router_loss: RouterLoss | None = None,
                 ese_loss: ESELoss | None = None, gather_across_devices: bool = False) -> None:
        super().__init__()
        self.loss, self.router_loss, self.ese_loss = loss, router_loss, ese_loss
        self.gather_across_devices = gather_across_devices

    @property
    def student_layers(self) -> list[int]:
        """The shallower layers whose pooled embeddings the objective needs (ESE's students)."""
        return self.ese_loss.student_layers if self.ese_loss is not None else []

    @property
    def dev_slices(self) -> list[tuple[int, int]]:
        """The (layer, dims) slices ESE trains, the full one included (none without ESE): each is scored on dev."""
        return self.ese_loss.dev_slices if self.ese_loss is not None else []

    def loss_terms(self, batch: RowBatch) -> dict[str, Tensor]:
        """The combined loss's terms, over the global batch of every process with ``gather_across_devices``."""
        return self.loss(gather_rows(batch) if self.gather_across_devices else batch)

    def forward(self, encoded: EncodedBatch, batch: RowBatch) -> ObjectiveOutput:
        batch = batch.with_embeddings(encoded.embeddings)
        terms = self.loss_terms(batch)
        loss = self.loss.combine(terms, batch.source)
        routing = {}
        if self.router_loss is not None and encoded.router_logits is not None:
            router_terms = self.router_loss(encoded.router_logits)
            loss = loss + self.router_loss.combine(router_terms)
            terms.update(router_terms)
            routing[MOE_ROUTING] = encoded.router_logits
        if self.ese_loss is not None:
            layers = {**encoded.layer_embeddings, self.ese_loss.num_layers: encoded.embeddings}
            ese_terms = self.ese_loss(layers, lambda embeddings: self.loss.combine(
                self.loss_terms(batch.with_embeddings(embeddings)), batch.source))
            if ese_terms:
                loss = loss + ese_terms[ESE_TOTAL]
                terms.update(ese_terms)
            if self.ese_loss.head_router_logits:
                routing[ESE_HEAD_ROUTING] = tuple(self.ese_loss.head_router_logits[layer]
                                                  for layer in self.ese_loss.layers)
        first, second, scores = batch.scored_pairs()
        pairs = ScoredPairs(batch.embeddings[first], batch.embeddings[second], scores)
        layer_pairs = None if self.training else {
            layer: ScoredPairs(embeddings[first], embeddings[second], scores)
            for layer, embeddings in encoded.layer_embeddings.items()}
        return ObjectiveOutput(loss=loss, terms=terms, pairs=pairs, layer_pairs=layer_pairs, routing=routing)
