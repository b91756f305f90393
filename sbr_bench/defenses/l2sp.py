"""``defense=l2sp``: L2-SP, weights pulled to their aligned values (Li et al., ICML 2018).

The fine-tuning-stage baseline that the Lisa paper describes under the name "EWC": a squared
distance of the trainable weights to their values at the start of the user's fine-tuning,
without Fisher weights (``defense=ewc`` adds them).

    L = CE(user data) + lam * sum_i ||w_i - w0_i||^2      over the trainable parameters

Arguments:
    ``lam``   the weight. No paper publishes one for this baseline. Default 0.5 = rho / 2 with
              Lisa's rho = 1: the same pull as Lisa's proximal term, towards a fixed anchor
              (the aligned model) instead of one re-taken at every state switch. How large the
              term is next to the task loss at this value: docs/defenses.md, every defense on the toy model.
    GA        the term is added on every micro-batch; Lightning's 1/GA loss scaling makes it
              count once per optimizer step, as the formula reads.
    w0        the trainable parameters at ``setup()``: with the fresh attack LoRA, B = 0 and A at
              its random init, i.e. exactly the aligned model; with ``adapter=full``, the aligned
              weights themselves.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from sbr_bench.defenses.base import Defense
from sbr_bench.schema import NonNegativeFloat


class L2SP(Defense):
    """Squared distance to the weights at the start of the stage; ``EWC`` weights it by the Fisher."""

    stage = "attack"
    plain_sft_at: ClassVar[dict] = {"lam": 0}  # L = CE + lam * distance (EWC: the same, Fisher-weighted)
    passes_per_step = 1
    term = "l2sp"

    def __init__(self, lam: NonNegativeFloat = 0.5):
        super().__init__()
        self.lam = float(lam)
        self.params: list[torch.nn.Parameter] = []
        self.reference: list[torch.Tensor] = []
        self.weights: list[torch.Tensor] | None = None  # per-element weights (EWC's Fisher); None = all 1

    def setup(self, module) -> None:
        """Copy the trainable weights at the start of the stage (w0) and compute the element weights."""
        self.params = list(module.trainable_parameters())
        self.reference = [p.detach().clone() for p in self.params]
        self.weights = self.importance(module)

    def importance(self, module) -> list[torch.Tensor] | None:
        """Per-element weights of the squared distance (None: unweighted, L2-SP)."""
        return None

    def distance(self) -> torch.Tensor:
        """sum_i weight_i * (w_i - w0_i)^2 over every trainable element, in fp32."""
        weights = self.weights if self.weights is not None else [None] * len(self.params)
        total = torch.zeros((), device=self.params[0].device) if self.params else torch.zeros(())
        for p, p0, f in zip(self.params, self.reference, weights, strict=True):
            squared = (p.float() - p0.float()) ** 2
            total = total + (squared if f is None else f * squared).sum()
        return total

    def loss_terms(self, module, batch):
        """``{term: lam * distance}``, the same on every micro-batch (weights change only at a step)."""
        return {self.term: self.lam * self.distance()}
