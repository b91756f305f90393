"""``defense=ewc``: Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017) as the Vaccine code runs it.

The fine-tuning-stage baseline of the Vaccine paper (arXiv 2402.01109, Tables 1 and 4) and the
Lisa paper: a squared distance to the weights at the start of the user's fine-tuning, weighted
element by element by the diagonal Fisher information of the ALIGNMENT loss, so the weights that
matter for the alignment data move least.

    L = CE(user data) + lam * sum_i F_i * (w_i - w0_i)^2
    F = sum over alignment batches b of (grad_w L_align(b; w0))^2        (elementwise square)

Paper symbols -> arguments:
    lambda   -> ``lam`` (1e9, the default of the official script EWC_finetune/*.sh; paper sweep
                1e6 / 1e9 / 1e12)
    F        -> computed once in ``setup()`` at w0 on the alignment data (refusals and helpful
                answers; the code: the BeaverTails ``is_safe`` evaluation set), batched like the
                stage's own data (same batch size and max length, as the code's evaluation loader);
                each batch's gradient is that of its mean response-only cross-entropy
    sum / mean -> ``fisher_reduction``: "sum" over batches (default: the code's FITrainer) or
                "mean" (the Fisher as an expectation; lam then needs ~number-of-batches times more)

Decisions and differences from the official code:
    - The Vaccine code keeps training the ALIGNMENT LoRA in the user stage (one LoRA, "EWC REUSE THE
      SAME LORA"), so both of its factors are non-zero at w0. This benchmark merges the alignment
      and trains a fresh LoRA, whose B is 0: the gradient w.r.t. A (a product with B) is then zero at
      w0, A's Fisher is 0 and only B is constrained; A moves freely (its effect still goes through B).
      With ``adapter=full`` every weight is weighted by its own Fisher.
    - The Fisher is computed with dropout off (the model in eval mode, restored afterwards); the
      code computes it in train mode, i.e. under LoRA dropout (0.1 there, 0 in this benchmark's
      adapter, where the two agree).
    - At lam = 1e9 the term dominates on the toy run (0.30 next to a task CE of 0.37 at the end, and
      the attacked model behaves as the aligned one: HS, FA and over-refusal unchanged), which is
      the paper's picture of EWC: little harm, little fine-tuning (Lisa Table 3: FA 18).
    - The gradients come from ``torch.autograd.grad``, so ``.grad`` is never written; the code
      leaves the last alignment batch's gradient in ``.grad``, where it joins the first step's.
"""

from __future__ import annotations

from typing import Literal

import torch

from sbr_bench.defenses.l2sp import L2SP
from sbr_bench.errors import ConfigError
from sbr_bench.schema import NonNegativeFloat


class EWC(L2SP):
    """L2-SP weighted by the diagonal Fisher of the alignment loss; see the module docstring."""

    term = "ewc"

    def __init__(self, lam: NonNegativeFloat = 1e9, fisher_reduction: Literal["sum", "mean"] = "sum"):
        super().__init__(lam=lam)
        self.fisher_reduction = fisher_reduction

    def check(self, pools) -> None:
        """The Fisher needs alignment data."""
        if not pools.align_harmful and not pools.align_benign:
            raise ConfigError("defense=ewc needs alignment data for its Fisher but the alignment pools are empty")

    def extra_data(self, pools):
        """The alignment data, as a stream batched like the stage's data (read once, in setup)."""
        return {"fisher": [*pools.align_harmful, *pools.align_benign]}

    def importance(self, module) -> list[torch.Tensor]:
        """Diagonal Fisher at the current weights: squared batch gradients, summed (or averaged) over batches."""
        model = module.model
        modes = [(m, m.training) for m in model.modules()]
        model.eval()  # no dropout: the Fisher of the model itself
        fisher = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        batches = 0
        try:
            for batch in module.streams["fisher"]:  # one pass over the alignment data
                batch = {k: v.to(module.device) for k, v in batch.items()}
                grads = torch.autograd.grad(module.task_loss(batch), self.params, allow_unused=True)
                for f, g in zip(fisher, grads, strict=True):
                    if g is not None:
                        f.add_(g.float() ** 2)
                batches += 1
        finally:
            for m, training in modes:
                m.train(training)
        if self.fisher_reduction == "mean":
            fisher = [f / batches for f in fisher]
        return fisher
