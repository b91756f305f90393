"""``defense=lisa``: Lazy safety alignment (Huang et al., arXiv 2405.18641, NeurIPS 2024).

Bi-State Optimization (BSO) with a proximal term. The provider interleaves alignment steps into the
user's fine-tuning job: K1 optimizer steps on alignment data (refusals and helpful answers), then K2
steps on the user's data, and again, with one shared optimizer. Each state is pulled towards the
weights at the last state switch, so neither state drifts far from the point the other left:

    state 1 (K1 steps):  min_w  f(w) + rho/2 * ||w - w_t||^2        f: alignment loss
    state 2 (K2 steps):  min_w  h(w) + rho/2 * ||w - w~_t+1||^2     h: the user's loss

Paper symbols -> arguments:
    K1, K2   -> ``align_steps``, ``finetune_steps`` (100 / 900, paper and official script), scaled
                to the run's step budget by ``reference_steps`` (rule below)
    rho      -> ``rho`` (1, paper default; 0 = BSO without the proximal term)
    w_t, w~  -> the anchor: a copy of the trainable weights taken at each state switch (the
                initial weights before the first switch)

As in the official code (git-disl/Lisa, LisaTrainer):
    - the alignment state comes first; alignment batches REPLACE the user's batches in its steps
      (the user's batch of such a step is skipped), so the run has exactly plain SFT's number of
      steps and K1 / (K1 + K2) of them train on alignment data;
    - the alignment data is a separate stream, batched like the user's data and cycled;
    - the proximal term acts in both states, against the weights at the last switch;
    - it is off during the first ``proximal_start`` = 10% of the steps (the code's comment: it
      hurts benign accuracy early on) and on for the steps whose 0-based index s satisfies
      s > 0.1 * total_steps (the code's strict inequality).

Where this benchmark departs from the code:
    step counting     the code counts ``training_step`` calls (micro-batches; its scripts use no
                      accumulation, so micro-batch = optimizer step). Here the states alternate per
                      OPTIMIZER step (Lightning's ``global_step``, constant inside an accumulation
                      window): a window is never split between the two states, and every
                      micro-batch of an alignment window draws its own alignment batch. The
                      proximal start and the budget are counted in optimizer steps too.
    alignment data    the code: 10000 BeaverTails ``is_safe`` pairs; here the alignment pools of
                      the bundled data (refusals and helpful answers, the alignment stage's data).
    ``reference_steps``  the paper's budget is ~20000 steps (n = 5000, batch 5, 20 epochs); a CPU
                      run has ~100. Unscaled, K1 = 100 would spend a small run's whole budget in the
                      alignment state. When the run's budget B is smaller than ``reference_steps``:
                          K1' = max(1, round(K1 * B / reference_steps))
                          K2' = max(1, round(K1' * K2 / K1))        (halves rounded up)
                      This keeps the number of alternations (about reference_steps / (K1 + K2),
                      i.e. 20 cycles as in the paper) and the K1:K2 ratio (exactly whenever K2 / K1
                      is an integer, as for 100 / 900: the alignment share stays 10%). Rounding K2
                      independently would not: 100 / 900 at B = 64 gives 1 / 3, a 25% alignment
                      share. Budgets at or above ``reference_steps`` keep K1 / K2 unscaled, as the
                      paper does for its longer runs (GSM8K, 50 epochs). ``null`` turns scaling off.
"""

from __future__ import annotations

import logging
import math

import torch

from sbr_bench.defenses.base import Defense
from sbr_bench.errors import ConfigError
from sbr_bench.schema import Fraction, NonNegativeFloat, PositiveInt

log = logging.getLogger(__name__)

ALIGN, FINETUNE = "alignment", "finetune"


def scaled_steps(align_steps: int, finetune_steps: int, budget: int, reference_steps: int | None) -> tuple[int, int]:
    """(K1, K2) for a run of ``budget`` optimizer steps; see the module docstring for the rule."""
    if reference_steps is None or budget >= reference_steps:
        return align_steps, finetune_steps
    k1 = max(1, half_up(align_steps * budget / reference_steps))
    k2 = max(1, half_up(k1 * finetune_steps / align_steps))
    return k1, k2


def half_up(x: float) -> int:
    """Round halves up (Python's round() sends 2.5 to 2)."""
    return math.floor(x + 0.5)


class Lisa(Defense):
    """Bi-State Optimization with a proximal term; see the module docstring for the math and options."""

    stage = "attack"
    # None: at every setting the alignment state comes first (K1 >= 1 steps) and swaps the user's
    # batches for alignment batches; rho = 0 only removes the proximal term (BSO without it).
    plain_sft_at = None
    passes_per_step = 1  # + the proximal term

    def __init__(
        self,
        rho: NonNegativeFloat = 1.0,
        align_steps: PositiveInt = 100,
        finetune_steps: PositiveInt = 900,
        reference_steps: PositiveInt | None = 20000,
        proximal_start: Fraction = 0.1,
    ):
        super().__init__()
        self.rho = float(rho)
        self.align_steps = int(align_steps)
        self.finetune_steps = int(finetune_steps)
        self.reference_steps = None if reference_steps is None else int(reference_steps)
        self.proximal_start = float(proximal_start)
        # Set by setup() for the run at hand.
        self.k1, self.k2 = self.align_steps, self.finetune_steps
        self.budget = 0
        self.state: str | None = None
        self.params: list[torch.nn.Parameter] = []
        self.anchor: list[torch.Tensor] = []

    def check(self, pools) -> None:
        """The alignment state needs alignment data."""
        if not pools.align_harmful and not pools.align_benign:
            raise ConfigError("defense=lisa needs alignment data but data.harmful.align and the benign pool are empty")

    def extra_data(self, pools):
        """The alignment stream: refusals and helpful answers (the code: BeaverTails ``is_safe`` pairs)."""
        return {"align": [*pools.align_harmful, *pools.align_benign]}

    def setup(self, module) -> None:
        """Fix K1 / K2 for this run's budget and take the first anchor (the initial weights)."""
        self.budget = module.total_steps()
        self.k1, self.k2 = scaled_steps(self.align_steps, self.finetune_steps, self.budget, self.reference_steps)
        self.params = list(module.trainable_parameters())
        self.take_anchor()
        self.state = None
        log.info(
            "lisa: K1=%d alignment / K2=%d fine-tuning steps over %d steps; proximal (rho=%g) from step > %g",
            self.k1,
            self.k2,
            self.budget,
            self.rho,
            self.proximal_start * self.budget,
        )

    def effective_settings(self) -> dict[str, int]:
        """K1 / K2 as this run uses them (scaled to its budget by ``reference_steps``), and the budget."""
        return {"align_steps": self.k1, "finetune_steps": self.k2, "budget_steps": self.budget}

    def take_anchor(self) -> None:
        """The current trainable weights become the anchor of the proximal term."""
        self.anchor = [p.detach().clone() for p in self.params]

    def state_at(self, step: int) -> str:
        """The state of optimizer step ``step`` (0-based): K1 alignment steps first, then K2 fine-tuning steps."""
        return ALIGN if step % (self.k1 + self.k2) < self.k1 else FINETUNE

    def select_batch(self, module, batch):
        """An alignment batch in the alignment state, the user's batch otherwise; re-anchor at a switch."""
        state = self.state_at(module.trainer.global_step)
        if state != self.state:
            if self.state is not None:  # a switch: weights are constant within an accumulation window
                self.take_anchor()
            self.state = state
        module.log(f"{module.stage}/lisa_state", float(state == ALIGN), batch_size=batch["input_ids"].shape[0])
        return module.extra_batch("align") if state == ALIGN else batch

    def proximal_active(self, step: int) -> bool:
        """The code's rule: no proximal term while step <= proximal_start * total steps."""
        return self.rho > 0 and step > self.proximal_start * self.budget

    def loss_terms(self, module, batch):
        """``{"proximal": rho/2 * sum ||w - anchor||^2}`` once the start fraction has passed."""
        if not self.proximal_active(module.trainer.global_step):
            return {}
        distance = sum(((p.float() - a.float()) ** 2).sum() for p, a in zip(self.params, self.anchor, strict=True))
        return {"proximal": self.rho / 2 * distance}
