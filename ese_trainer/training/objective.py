"""The training objective: one module owning every loss term, so that training it trains all it holds."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn
from transformers.utils import ModelOutput

from ese_trainer.ese import ESE_TOTAL, ESELoss
from ese_trainer.losses import PairLoss, Pairs, RouterLoss
from ese_trainer.modeling.encoding import EncodedBatch
from ese_trainer.training.distributed import gather_pairs

MOE_ROUTING = "moe"
ESE_HEAD_ROUTING = "ese_head"


@dataclass
class ObjectiveOutput(ModelOutput):
    """``loss`` (what is back-propagated), ``terms`` (every named term: the pair terms and router terms unweighted,
    ``loss_ese`` the weighted ESE sum and its parts), ``pairs`` (this batch's last-layer embeddings and scores) and
    ``routing`` (router logits per routed component, for utilisation statistics: ``moe`` = the encoder's MoE
    layers, ``ese_head`` = ESE's target heads). A ``ModelOutput``, so the Trainer's evaluation reads it as a
    mapping."""

    loss: Tensor | None = None
    terms: dict[str, Tensor] | None = None
    pairs: Pairs | None = None
    routing: dict[str, tuple[Tensor, ...]] | None = None


class EmbeddingObjective(nn.Module):
    """``loss = L_pair(e_n) + L_router + L_ESE``, each part optional but the first::

        L_pair   = Σ_t w_t · term_t(e_n)                    (PairLoss: CoSENT, in-batch negatives, AnglE)
        L_router = α · loss_router_aux + β · loss_router_z  (RouterLoss, an MoE encoder)
        L_ESE    = loss_ese                                 (ESELoss: layer and compression terms, its heads)

    ``e_n`` are the pooled last-layer embeddings of both sides of the pairs. Returns an :class:`ObjectiveOutput`
    whose ``terms`` are logged one by one; ``loss`` is exactly the sum above. The ESE heads (if any) are this
    module's parameters: train it inside the model the Trainer wraps and its optimizer, DDP, gradient clearing and
    checkpoints cover them.
    """

    def __init__(self, pair_loss: PairLoss, router_loss: RouterLoss | None = None,
                 ese_loss: ESELoss | None = None, gather_across_devices: bool = False) -> None:
        super().__init__()
        self.pair_loss, self.router_loss, self.ese_loss = pair_loss, router_loss, ese_loss
        self.gather_across_devices = gather_across_devices

    def pair_terms(self, pairs: Pairs) -> dict[str, Tensor]:
        """The pair loss's terms, over the global batch of every process with ``gather_across_devices``."""
        return self.pair_loss(gather_pairs(pairs) if self.gather_across_devices else pairs)

    @property
    def student_layers(self) -> list[int]:
        """The shallower layers whose pooled embeddings the objective needs (ESE's students)."""
        return self.ese_loss.student_layers if self.ese_loss is not None else []

    def forward(self, encoded: EncodedBatch, scores: Tensor, text_ids: Tensor | None = None) -> ObjectiveOutput:
        scores = scores.to(encoded.embeddings.device)
        pairs = Pairs(*encoded.embeddings.chunk(2, dim=0), scores, text_ids)
        terms = self.pair_terms(pairs)
        loss = self.pair_loss.combine(terms)
        routing = {}
        if self.router_loss is not None and encoded.router_logits is not None:
            router_terms = self.router_loss(encoded.router_logits)
            loss = loss + self.router_loss.combine(router_terms)
            terms.update(router_terms)
            routing[MOE_ROUTING] = encoded.router_logits
        if self.ese_loss is not None:
            layers = {layer: tuple(embeddings.chunk(2, dim=0))
                      for layer, embeddings in encoded.layer_embeddings.items()}
            layers[self.ese_loss.num_layers] = (pairs.emb_a, pairs.emb_b)
            ese_terms = self.ese_loss(layers, lambda emb_a, emb_b: self.pair_loss.combine(
                self.pair_terms(Pairs(emb_a, emb_b, scores, text_ids))))
            if ese_terms:
                loss = loss + ese_terms[ESE_TOTAL]
                terms.update(ese_terms)
            if self.ese_loss.head_router_logits:
                routing[ESE_HEAD_ROUTING] = tuple(self.ese_loss.head_router_logits[layer]
                                                  for layer in self.ese_loss.layers)
        return ObjectiveOutput(loss=loss, terms=terms, pairs=pairs, routing=routing)
