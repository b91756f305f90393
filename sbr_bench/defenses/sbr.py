"""``defense=sbr``: Safety Bottleneck Regularization ("Safety Anchor", arXiv 2605.05995, ICML 2026).

During the user's fine-tuning, pin the vector the LM head reads at the last prompt token of a few
harmful anchor prompts to its value in the aligned model. With the unembedding frozen, that vector
fixes the distribution of the first response token - the bottleneck through which a refusal
starts.

    L_total = L_CE(user data) + lam * L_safe
    L_safe  = mse(h_theta(x'), h_ref(x'))       over the K anchors

Paper symbols -> arguments:
    lambda           -> ``lam`` (50, as in the official code, with element-wise MSE)
    K = |X_anchor|   -> ``num_anchors`` (1; the code's runs use 1 and 8)
    X_anchor         -> ``num_anchors`` prompts drawn with ``anchor_seed`` from the anchor pool of
                        the data (disjoint from attack and evaluation prompts), or ``prompts``
    h_theta(x')      -> last-layer hidden state after the final norm (the LM-head input) at the
                        last token of x' rendered with the chat template and generation prompt
    h_ref(x')        -> the same from the model at the start of the fine-tuning stage (the new
                        LoRA's B is zero, so this is the aligned model), computed once, fp32

Discrepancies between paper and official code, decided here as options:
    ``reduction``     "elementwise_mean" (default; the code's F.mse_loss, mean over K*d entries,
                      which is what lam=50 was tuned with) or "paper_sum" ((1/K) sum_k ||dh_k||^2,
                      the paper's formula read literally: d times larger).
    ``anchor_pass``   "optimizer_step" (default: one anchor forward/backward per optimizer step,
                      weighted by the number of micro-batches in the step; the parameters do not
                      change inside an accumulation window, so with dropout off the gradient equals
                      the code's) or "micro_batch" (the code: one anchor pass in every micro-batch).
    ``ga_scaling``    "mean" (default: lam weighs L_safe once per optimizer step, as L_total reads)
                      or "sum" (lam per micro-batch, the effective weight GA*lam of the official
                      script when the CE is normalised over the whole accumulated batch).
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from sbr_bench.data.formatting import encode_prompts
from sbr_bench.defenses.base import Defense
from sbr_bench.errors import ConfigError
from sbr_bench.models import last_token_index, lm_head_input

REDUCTIONS = ("elementwise_mean", "paper_sum")
ANCHOR_PASSES = ("optimizer_step", "micro_batch")
GA_SCALINGS = ("mean", "sum")


class SBR(Defense):
    """Safety Bottleneck Regularization; see the module docstring for the math and options."""

    stage = "attack"

    def __init__(
        self,
        lam: float = 50.0,
        num_anchors: int = 1,
        anchor_seed: int = 0,
        prompts: list[str] | None = None,
        reduction: str = "elementwise_mean",
        anchor_pass: str = "optimizer_step",
        ga_scaling: str = "mean",
    ):
        super().__init__()
        if lam < 0:
            raise ConfigError(f"defense.lam={lam} must be >= 0")
        if num_anchors < 1:
            raise ConfigError(f"defense.num_anchors={num_anchors} must be >= 1")
        for name, value, allowed in (
            ("reduction", reduction, REDUCTIONS),
            ("anchor_pass", anchor_pass, ANCHOR_PASSES),
            ("ga_scaling", ga_scaling, GA_SCALINGS),
        ):
            if value not in allowed:
                raise ConfigError(f"defense.{name}={value!r} is not one of: {', '.join(allowed)}")
        self.lam = float(lam)
        self.num_anchors = num_anchors
        self.anchor_seed = anchor_seed
        self.prompts = list(prompts) if prompts else None
        self.reduction = reduction
        self.anchor_pass = anchor_pass
        self.ga_scaling = ga_scaling
        self.anchor_prompts: list[str] = []
        self.register_buffer("anchor_ids", torch.empty(0, dtype=torch.long), persistent=False)
        self.register_buffer("anchor_mask", torch.empty(0, dtype=torch.long), persistent=False)
        self.register_buffer("reference", torch.empty(0), persistent=False)

    def check(self, pools) -> None:
        """K must not exceed the prompts available."""
        available, where = (
            (len(self.prompts), "defense.prompts")
            if self.prompts is not None
            else (len(pools.anchors), "the anchor pool")
        )
        if self.num_anchors > available:
            raise ConfigError(
                f"defense.num_anchors={self.num_anchors} but {where} holds {available} prompts; "
                f"use num_anchors <= {available}"
            )

    def choose_anchors(self, pool: list[str]) -> list[str]:
        """The K anchor prompts: the first K of ``prompts``, or a seeded draw from the anchor pool."""
        if self.prompts is not None:
            return self.prompts[: self.num_anchors]
        return random.Random(self.anchor_seed).sample(pool, self.num_anchors)

    def setup(self, module) -> None:
        """Tokenise the anchors (right padding) and cache their reference states from the current model."""
        self.check(module.pools)
        self.anchor_prompts = self.choose_anchors(module.pools.anchors)
        batch = encode_prompts(module.tokenizer, self.anchor_prompts, padding_side="right")
        device = next(module.model.parameters()).device
        self.anchor_ids = batch["input_ids"].to(device)
        self.anchor_mask = batch["attention_mask"].to(device)
        with torch.no_grad():
            self.reference = self.anchor_states(module.model).detach().float()

    def anchor_states(self, model) -> torch.Tensor:
        """LM-head input at the last prompt token of every anchor, shape (K, d)."""
        hidden = lm_head_input(model, self.anchor_ids, self.anchor_mask)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_token_index(self.anchor_mask)]

    def distance(self, model) -> torch.Tensor:
        """L_safe: the (unweighted) distance of the anchor states to their references."""
        current = self.anchor_states(model).float()
        mse = F.mse_loss(current, self.reference)
        return mse * current.shape[-1] if self.reduction == "paper_sum" else mse

    def loss_terms(self, module, batch):
        """``{"sbr": lam * L_safe}``, scaled so that Lightning's 1/GA loss scaling gives the chosen weight."""
        position, window, accumulate = module.micro_batch_position()
        scale = float(accumulate) if self.ga_scaling == "sum" else 1.0
        if self.anchor_pass == "optimizer_step":
            if position != 0:
                return {}
            scale *= window
        return {"sbr": self.lam * scale * self.distance(module.model)}
