"""``defense=constrained_sft``: the token-wise constrained fine-tuning objective of Qi et al. 2024
("Safety Alignment Should Be Made More Than Just a Few Tokens Deep", arXiv 2406.05946, ICLR 2025).

The user's fine-tuning loss is replaced by an objective that lets each answer token's log-probability
move away from the aligned model's only at a cost, with the strongest constraint on the first
tokens, where a shallow alignment decides between refusing and complying:

    L = mean over answer tokens t of  -(2 / beta_t) * log sigmoid(beta_t * delta_t)
    delta_t = log pi_theta(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)

Its gradient is w_t * grad(-log pi_theta(y_t | ...)) with w_t = 2 * (1 - sigmoid(beta_t * delta_t)).
As in the official code we train on that gradient-equivalent surrogate (numerically stable):

    loss = mean over the batch's answer tokens of  -w_t * log pi_theta(y_t | ...),
    w_t  = clamp(2 * (1 - sigmoid(beta_t * delta_t)), min=min_weight), no gradient through w_t

Paper symbols -> arguments (absolute values; the code's beta * factor in brackets):
    beta_1            -> ``beta_first_token`` (0.5 = 0.1 x first_token_bias_factor 5)
    beta_2..beta_P    -> ``beta_prefix`` (2 = 0.1 x bias_factor 20), P = ``prefix_length`` (bias_length 5;
                         0 gives every token ``beta``, as in the code)
    beta_t, t > P     -> ``beta`` (0.1)
    the clamp         -> ``min_weight`` (1e-3)
    pi_ref            -> the model at the start of the fine-tuning stage (the aligned model)

Decisions:
    Reference log-probs  The attack trains a fresh LoRA (B = 0) over the merged aligned weights, so
                      pi_ref is the same model with the adapter disabled (peft ``disable_adapter``); for
                      full fine-tuning, or an adapter that does not start at zero, a frozen copy made in
                      ``setup``. The official code precomputes the reference log-probs once; we recompute
                      them each step without gradient (the same values: one extra forward per step, no
                      copy of the data). The reference runs in eval mode (the code disables dropout).
    Averaging         The paper sums over an answer's tokens and takes the expectation over examples;
                      the code (and this) averages over all answer tokens of the micro-batch, like the
                      plain SFT loss. The token index t restarts at 1 with every answer.
    Precision         Log-probs in fp32, computed only at the answer tokens (the code: model dtype, all
                      positions).
    beta -> 0         w_t = 2 * (1 - sigmoid(0)) = 1 exactly, so with every beta = 0 the loss is the
                      plain SFT loss, value and gradient; no special case. The exact objective diverges
                      like (2 / beta_t) log 2 in that limit, so what is logged as
                      ``<stage>/constrained_objective`` is the objective minus its value at
                      pi_theta = pi_ref, i.e. mean_t -(2 / beta_t) log(2 sigmoid(beta_t delta_t)): the same
                      gradient, 0 at the start of the stage, and -delta_t (the CE minus the reference CE)
                      at beta_t = 0. ``<stage>/constrained_weight`` logs the mean w_t.
"""

from __future__ import annotations

import copy
import logging
import math
from contextlib import contextmanager, nullcontext
from typing import ClassVar

import torch
import torch.nn.functional as F

from sbr_bench.data.formatting import IGNORE_INDEX
from sbr_bench.defenses.base import Defense
from sbr_bench.models import lm_head_input
from sbr_bench.schema import NonNegativeFloat, NonNegativeInt

log = logging.getLogger(__name__)


def answer_logprobs(model, batch: dict[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
    """log p(y_t | x, y_<t) in fp32 at the answer tokens (``keep`` marks the positions predicting one)."""
    targets = batch["labels"][:, 1:][keep]
    if getattr(model.config, "final_logit_softcapping", None):  # logits transformed: use HF's path
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        logits = logits[:, :-1][keep]
    else:
        hidden = lm_head_input(model, batch["input_ids"], batch["attention_mask"])
        logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    # Same per-token values as the SFT loss's cross_entropy, so every beta = 0 reproduces it exactly.
    return -F.cross_entropy(logits.float(), targets, reduction="none")


def is_fresh_lora(model) -> bool:
    """A peft model whose LoRA B matrices are all zero: disabling the adapter gives this very model."""
    if not hasattr(model, "disable_adapter"):
        return False
    b = [p for name, p in model.named_parameters() if "lora_B" in name or "lora_embedding_B" in name]
    return bool(b) and not any(p.detach().any() for p in b)


@contextmanager
def eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class ConstrainedSFT(Defense):
    """Token-wise constrained SFT in the attack stage; see the module docstring for the math and options."""

    stage = "attack"
    # every beta = 0: w_t = 2 (1 - sigmoid(0)) = 1, the plain SFT loss in value and gradient
    plain_sft_at: ClassVar[dict] = {"beta": 0, "beta_first_token": 0, "beta_prefix": 0}
    passes_per_step = 1  # + one forward without gradient for the reference log-probs

    def __init__(
        self,
        beta: NonNegativeFloat = 0.1,
        beta_first_token: NonNegativeFloat = 0.5,
        beta_prefix: NonNegativeFloat = 2.0,
        prefix_length: NonNegativeInt = 5,
        min_weight: NonNegativeFloat = 1e-3,
    ):
        super().__init__()
        self.beta = float(beta)
        self.beta_first_token = float(beta_first_token)
        self.beta_prefix = float(beta_prefix)
        self.prefix_length = int(prefix_length)
        self.min_weight = float(min_weight)
        self.reference_model = None  # the frozen copy, when the adapter cannot simply be disabled

    def setup(self, module) -> None:
        """Decide where pi_ref comes from: the disabled fresh adapter, else a frozen copy of the model now."""
        model = module.model
        if is_fresh_lora(model):
            self.reference_model = None
            log.info("constrained SFT: reference = the model with its fresh LoRA adapter disabled")
        else:
            self.reference_model = copy.deepcopy(model).requires_grad_(False).eval()
            log.info("constrained SFT: reference = a frozen copy of the model at the start of the stage")

    def reference_logprobs(self, model, batch, keep) -> torch.Tensor:
        """log pi_ref at the answer tokens, without gradient, dropout off."""
        reference = self.reference_model if self.reference_model is not None else model
        disabled = model.disable_adapter() if self.reference_model is None else nullcontext()
        with torch.no_grad(), eval_mode(reference), disabled:
            return answer_logprobs(reference, batch, keep)

    def betas(self, keep: torch.Tensor) -> torch.Tensor:
        """beta_t of every answer token (flattened like ``x[keep]``); t counts the answer's tokens from 0."""
        index = (keep.cumsum(dim=1) - 1)[keep]
        betas = torch.full(index.shape, self.beta, device=keep.device)
        betas[index < self.prefix_length] = self.beta_prefix
        if self.prefix_length > 0:
            betas[index == 0] = self.beta_first_token
        return betas

    def task_loss(self, module, batch):
        """The surrogate -mean_t w_t log pi_theta(y_t | ...), with w_t from the reference log-probs."""
        model = module.model
        keep = batch["labels"][:, 1:] != IGNORE_INDEX
        logp = answer_logprobs(model, batch, keep)
        delta = logp.detach() - self.reference_logprobs(model, batch, keep)
        betas = self.betas(keep)
        weight = (2 * (1 - torch.sigmoid(betas * delta))).clamp_min(self.min_weight)
        if "window_tokens" in batch:  # attack.ce_normalization=window, as SafetyModule.task_loss
            loss = -(weight * logp).sum() / batch["window_tokens"] * module.grad_accum
        else:
            loss = -(weight * logp).mean()
        with torch.no_grad():
            safe = torch.where(betas > 0, betas, 1.0)
            shifted = torch.where(betas > 0, -(2 / safe) * (F.logsigmoid(betas * delta) + math.log(2)), -delta)
        log_metrics(
            module,
            {"constrained_objective": shifted.mean(), "constrained_weight": weight.mean()},
            batch["input_ids"].shape[0],
        )
        return loss


def log_metrics(module, values: dict[str, torch.Tensor], batch_size: int) -> None:
    """Log through Lightning when the module is attached to a Trainer (not in a bare unit test)."""
    try:
        attached = module.trainer is not None
    except (AttributeError, RuntimeError):
        attached = False
    if attached:
        for name, value in values.items():
            module.log(f"{module.stage}/{name}", value, batch_size=batch_size)
