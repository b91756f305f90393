"""``defense=booster``: attenuating harmful perturbation (Huang et al., ICLR 2025, arXiv 2409.01586).

An alignment-stage defense. Besides the alignment loss it minimises how much one normalised
harmful gradient step would reduce the harmful loss, so that the later harmful fine-tuning makes
little progress:

    min_w  f(w) + lam * [ h(w) - h(w - alpha * grad h(w) / ||grad h(w)||) ]

with the first-order (MAML-style, Hessian dropped) update direction of the paper and code

    g = grad f(w) + lam * [ grad h(w) - grad h(w - alpha * grad h(w) / ||grad h(w)||) ]

Each micro-batch takes three passes (``manual_optimization``), all with ``torch.autograd.grad``
over the trainable parameters, so ``.grad`` holds only the accumulated result:

1. harmful batch at w -> G_h (and ||G_h||, one global L2 norm over all trainable parameters);
2. the trainable parameters moved in place to w - alpha * G_h / (||G_h|| + 1e-7), the same
   harmful batch -> G_h'; then w restored from a copy, bit for bit;
3. alignment batch at w -> G_f;

and ``G_f + lam * (G_h - G_h')`` is accumulated (divided by the micro-batches per step).

Paper symbols -> arguments:
    lambda  -> ``lam`` (5: official script ``smooth_align.sh`` and the paper's default; 100 collapses)
    alpha   -> ``alpha`` (0.1: official script and the paper's default)
    f       -> the stage's response-only cross-entropy on the alignment batch (``module.task_loss``)
    h       -> the response-only cross-entropy on a harmful batch: the ``"harmful"`` stream,
               ``pools.align_compliant``, harmful answers to the alignment pool's own prompts (the
               official code reads refusal and harmful answer of the same BeaverTails indices): the
               bundled data's compliant answers, or on the hub data (``pairing: same_prompt``) an
               unsafe BeaverTails answer to an alignment prompt, whose alignment side is an is_safe
               answer rather than a written refusal; ``num_harmful`` of them (null = the whole pool;
               the official runs use as many harmful samples as alignment samples, 4999)

Decisions on the official code (git-disl/Booster ``trainer.py``, BoosterAlignmentTrainer):
    harmful batch size  the stage's batch size (the stream shares it); the code hard-codes 10,
                        which equals the alignment batch size of all its scripts, so the two agree
                        there. One harmful batch per micro-batch, drawn from a reshuffled stream
                        (the code: a RandomSampler iterator, renewed when exhausted).
    weight restore      from a copy (bit-exact); the code subtracts the step back, which leaves
                        rounding residue in the weights at every step.
    accumulation        the code calls ``model.zero_grad()`` between its passes, which would
                        discard the earlier micro-batches of an accumulation window (its scripts
                        use gradient_accumulation_steps 1); here every pass uses autograd.grad,
                        so accumulation is exact. Not an option.
    ``vaccine_rho``     the code's optional ``perturb_aware`` mode (Booster + Vaccine, script
                        ``smooth_align_perturb.sh`` with rho 5): pass 3 becomes Vaccine's two passes,
                        G_f = grad of the alignment loss under the attention-output perturbation of
                        radius ``vaccine_rho`` (sbr_bench.defenses.vaccine). 0 (default) = plain
                        Booster (a zero perturbation gives the same G_f, so 0 simply skips it).

The user's fine-tuning: the official code continues the Booster LoRA itself (``--alternating
single_lora``), the parameters the regulariser was optimised over; ``conf/protocol_tier/booster_*``
picks ``adapter=continue`` for that wherever the alignment is a LoRA.

Cost: three forward/backward passes per step (four with ``vaccine_rho`` > 0), one copy of the
trainable parameters and at most two gradient-sized buffers besides ``.grad`` (small with LoRA,
the paper's setting).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from sbr_bench.data.pools import Pair
from sbr_bench.defenses.base import Defense
from sbr_bench.defenses.vaccine import NORM_GUARD, Vaccine, global_norm
from sbr_bench.errors import ConfigError
from sbr_bench.schema import NonNegativeFloat, PositiveFloat, PositiveInt

HARMFUL = "harmful"  # name of the extra stream


def gradients(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """d loss / d params without touching ``.grad``; zeros for a parameter the loss does not reach."""
    return list(torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True))


class Booster(Defense):
    """Booster alignment; see the module docstring for the math and options."""

    stage = "align"
    manual_optimization = True
    # lam = 0: the gradient is G_f alone (the harmful passes still run and are logged);
    # vaccine_rho = 0: no perturbation of G_f.
    plain_sft_at: ClassVar[dict] = {"lam": 0, "vaccine_rho": 0}
    passes_per_step = 3  # 4 with vaccine_rho > 0 (set in __init__)

    def __init__(
        self,
        lam: NonNegativeFloat = 5.0,
        alpha: PositiveFloat = 0.1,
        num_harmful: PositiveInt | None = None,
        vaccine_rho: NonNegativeFloat = 0.0,
    ):
        super().__init__()
        self.lam = float(lam)
        self.alpha = float(alpha)
        self.num_harmful = num_harmful
        self.vaccine_rho = float(vaccine_rho)
        self.vaccine = Vaccine(rho=vaccine_rho) if vaccine_rho > 0 else None
        self.passes_per_step = 4 if self.vaccine is not None else 3

    def check(self, pools) -> None:
        """The harmful pool must hold ``num_harmful`` pairs."""
        available = len(pools.align_compliant)
        if available == 0:
            raise ConfigError("Booster needs harmful alignment data but the align_compliant pool is empty")
        if self.num_harmful is not None and self.num_harmful > available:
            raise ConfigError(
                f"defense.num_harmful={self.num_harmful} but the align_compliant pool holds {available} pairs; "
                f"use num_harmful <= {available} or null"
            )

    def extra_data(self, pools) -> dict[str, list[Pair]]:
        """The harmful stream h is computed on."""
        return {HARMFUL: pools.align_compliant[: self.num_harmful]}

    def training_step(self, module, batch):
        """Three passes; ``G_f + lam * (G_h - G_h')`` goes into ``.grad``."""
        params = module.trainable_parameters()
        harmful = module.extra_batch(HARMFUL)

        loss_h = module.task_loss(harmful)
        grad_h = gradients(loss_h, params)
        step = self.alpha / (global_norm(grad_h) + NORM_GUARD)
        saved = [p.detach().clone() for p in params]
        try:
            with torch.no_grad():
                for p, g in zip(params, grad_h, strict=True):
                    p.sub_(g * step)
            loss_h_moved = module.task_loss(harmful)
            grad_h_moved = gradients(loss_h_moved, params)
        finally:  # restore w exactly, also when the pass raises
            with torch.no_grad():
                for p, w in zip(params, saved, strict=True):
                    p.copy_(w)
        del saved
        for g, g_moved in zip(grad_h, grad_h_moved, strict=True):
            g.sub_(g_moved)  # G_h - G_h', in place: one buffer less
        del grad_h_moved

        if self.vaccine is not None:
            loss_f, losses = self.vaccine.perturbed_loss(module, batch)
        else:
            loss_f = module.task_loss(batch)
            losses = {"task": loss_f.detach()}
        grad_f = gradients(loss_f, params)
        module.accumulate_grads(params, [gf.add_(d, alpha=self.lam) for gf, d in zip(grad_f, grad_h, strict=True)])
        return {
            **losses,
            "harmful": loss_h.detach(),
            # the regulariser's value: lam * (h(w) - h(w - alpha * grad h / ||grad h||))
            "booster": self.lam * (loss_h.detach() - loss_h_moved.detach()),
        }
