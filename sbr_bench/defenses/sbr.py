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

Cost: ``share_prefix`` (default true) runs the tokens the K anchors share at their start (the chat
template's system prompt and user header: 24 of SmolLM2's ~47 tokens per anchor) once, and the K
remainders against that prefix's key/value cache, with the gradient flowing through the cache. It is
an exact reformulation of the K full passes (equal up to float rounding; a test checks states and
gradients), only cheaper; the one difference is with adapter dropout > 0, where the K anchors share
the prefix's dropout mask. With K = 1 nothing is shared and the plain pass runs.
"""

from __future__ import annotations

import inspect
import random
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F

from sbr_bench.data.formatting import encode_prompts
from sbr_bench.defenses.base import Defense
from sbr_bench.errors import ConfigError
from sbr_bench.models import base_model, last_token_index, lm_head_input
from sbr_bench.schema import NonEmpty, NonEmptyStr, NonNegativeFloat, PositiveInt


class SBR(Defense):
    """Safety Bottleneck Regularization; see the module docstring for the math and options."""

    stage = "attack"
    plain_sft_at: ClassVar[dict] = {"lam": 0}  # L = CE + lam * L_safe
    passes_per_step = 1  # + one pass over K short anchor prompts

    def __init__(
        self,
        lam: NonNegativeFloat = 50.0,
        num_anchors: PositiveInt = 1,
        anchor_seed: int = 0,
        prompts: Annotated[list[NonEmptyStr], NonEmpty] | None = None,
        reduction: Literal["elementwise_mean", "paper_sum"] = "elementwise_mean",
        anchor_pass: Literal["optimizer_step", "micro_batch"] = "optimizer_step",
        ga_scaling: Literal["mean", "sum"] = "mean",
        share_prefix: bool = True,
    ):
        super().__init__()
        self.lam = float(lam)
        self.num_anchors = num_anchors
        self.anchor_seed = anchor_seed
        self.prompts = list(prompts) if prompts is not None else None
        self.reduction = reduction
        self.anchor_pass = anchor_pass
        self.ga_scaling = ga_scaling
        self.share_prefix = bool(share_prefix)
        self.prefix_len = 0  # tokens all anchors share at their start (0: plain passes)
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
        self.prefix_len = shared_prefix_length(self.anchor_ids, self.anchor_mask) if self.share_prefix else 0
        with torch.no_grad():
            self.reference = self.anchor_states(module.model).detach().float()

    def anchor_states(self, model) -> torch.Tensor:
        """LM-head input at the last prompt token of every anchor, shape (K, d)."""
        last = last_token_index(self.anchor_mask)
        rows = torch.arange(last.shape[0], device=last.device)
        if self.prefix_len:
            hidden = prefix_shared_hidden(model, self.anchor_ids, self.anchor_mask, self.prefix_len)
            return hidden[rows, last - self.prefix_len]
        hidden = lm_head_input(model, self.anchor_ids, self.anchor_mask)
        return hidden[rows, last]

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


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own (0 for one row)."""
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0).long()
    common = int(same.cumprod(dim=0).sum())
    return max(0, min(common, int(attention_mask.sum(dim=1).min()) - 1))


def prefix_shared_hidden(model, input_ids, attention_mask, prefix_len: int) -> torch.Tensor:
    """LM-head input of the tokens after ``prefix_len``: the shared prefix runs once (batch 1), its
    key/value cache is repeated for every row, and the rows' own tokens attend to it. Gradients flow
    through the cache into the prefix. Shape (rows, length - prefix_len, d)."""
    decoder = base_model(model).get_decoder()
    cache_arg = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    prefix = decoder(input_ids=input_ids[:1, :prefix_len], use_cache=True)
    cache = getattr(prefix, cache_arg)
    cache.batch_repeat_interleave(input_ids.shape[0])
    out = decoder(
        input_ids=input_ids[:, prefix_len:], attention_mask=attention_mask, use_cache=True, **{cache_arg: cache}
    )
    return out.last_hidden_state
