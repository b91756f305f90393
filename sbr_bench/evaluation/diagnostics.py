"""Diagnostics of the attack, logged whatever the defense: what moves while safety erodes.

Every ``eval.diagnostics.every`` optimizer steps of the attack (and at its start and end), one
forward pass over a few harmful evaluation prompts and one over the SBR anchors give:

``anchor_distance``
    SBR's L_safe as a monitor, even when SBR is off: the mean squared distance (element-wise mean,
    the official code's ``F.mse_loss``) between the LM-head input at the last prompt token of the
    default anchors (``SBR()``'s K = 1 seeded draw) now and at the start of the attack. Computed by
    ``sbr_bench.defenses.sbr.SBR`` itself (its ``setup`` and ``distance``), so it is the same quantity
    that ``defense=sbr`` penalises.
``param_distance``
    ``||theta - theta_start||_2`` over the trainable parameters (the LoRA matrices, or every weight),
    the quantity of the SBR paper's parameter-distance stress test (section 3).
``lora_delta_norm`` (LoRA only)
    the change of the merged weights, ``sqrt(sum_modules ||scaling * B @ A - (scaling * B @ A)_start||_F^2)``;
    at the start B = 0, so this is ``sqrt(sum ||scaling * B @ A||_F^2)``. It differs from
    ``param_distance``: A moves too, and a small B @ A can hide behind large A and B changes.
``harmful_drift``
    Vaccine's harmful embedding drift (Huang et al. 2024, arXiv 2402.01109): the L2 norm of the
    change of the hidden embedding of harmful data relative to the aligned model. The paper measures
    it on the alignment data; its code (``train.py``, ``EmbeddingCallback``) sums the squared change of
    every attention block's output over all tokens of 10 evaluation batches. Here: the final hidden
    representation (the last layer after the final norm, ``hidden_states[-1]``), over all real tokens
    of each harmful evaluation prompt (a Frobenius norm per prompt, padding excluded), averaged over
    the prompts: a per-prompt L2 norm as the paper states it, independent of the prompt count, and
    read where the output is decided (the SBR paper's drift-safety dissociation uses the same kind
    of number).
``refusal_start_prob``
    the probability that the first answer token begins a refusal: softmax of the logits at the last
    prompt position, summed over the refusal-start token ids (``refusal_start_tokens``), averaged
    over the harmful evaluation prompts. One forward pass, no generation.
``loss_<name>``
    the loss terms the module logged last (``attack/loss_task``, ``attack/loss_sbr``, ...), read from
    ``trainer.callback_metrics``.

Every measurement runs with no gradient, in eval mode, and leaves the model's train/eval flags and
every random generator exactly as it found them (``isolated``): diagnostics never change the
training trajectory (a test checks the final weights).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pytorch_lightning as pl
import torch

from sbr_bench.data.formatting import IGNORE_INDEX, encode_pair, encode_prompts
from sbr_bench.data.pools import Pair, Pools
from sbr_bench.defenses.sbr import SBR
from sbr_bench.errors import ConfigError
from sbr_bench.judges.keyword import REFUSAL_PHRASES
from sbr_bench.models import last_token_index, lm_head_input

log = logging.getLogger(__name__)


@contextmanager
def isolated(model) -> Iterator[None]:
    """Eval mode and no gradient inside; every module's train flag and every RNG restored on the way out."""
    modes = [(m, m.training) for m in model.modules()]
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def first_answer_token(tokenizer, response: str) -> int:
    """The first token of ``response`` as the model is trained to produce it (after the generation prompt)."""
    encoded = encode_pair(tokenizer, "hello", response, max_length=1024)
    return next(t for t in encoded["labels"] if t != IGNORE_INDEX)


def sentence_case(phrase: str) -> str:
    """``"i'm sorry"`` -> ``"I'm sorry"``: the judge's phrases are lower case, an answer starts capitalised."""
    return phrase[:1].upper() + phrase[1:]


def refusal_start_tokens(
    tokenizer, refusals: Sequence[str], compliant: Sequence[str], phrases: Sequence[str] = REFUSAL_PHRASES
) -> tuple[set[int], set[int]]:
    """Token ids that begin a refusal, and the ambiguous ids left out.

    Refusal starts: the first answer token of each keyword-judge phrase (sentence case) and of each
    refusal answer. Ambiguous: those that also begin a compliant answer (a token such as "I" when
    some compliant answer starts "I can ..."); they are removed, so the probability counts only
    tokens that commit to a refusal. On the bundled data no compliant answer starts with "I", so
    "I" counts: a model whose first token is "I" is, there, beginning a refusal.
    """
    refusal = {first_answer_token(tokenizer, sentence_case(p)) for p in phrases}
    refusal |= {first_answer_token(tokenizer, r) for r in refusals}
    complying = {first_answer_token(tokenizer, c) for c in compliant}
    ambiguous = refusal & complying
    unk = tokenizer.unk_token_id
    return refusal - ambiguous - ({unk} if unk is not None else set()), ambiguous


def responses(pairs: Sequence[Pair]) -> list[str]:
    return [p.response for p in pairs]


class Diagnostics:
    """The measurements of the module docstring; ``start`` takes the references, ``measure`` the values."""

    def __init__(self, num_prompts: int = 16):
        if num_prompts < 1:
            raise ConfigError(f"eval.diagnostics.num_prompts={num_prompts} must be >= 1")
        self.num_prompts = num_prompts
        self.anchor = SBR()  # default args: K = 1 anchor, seed 0, element-wise mean
        self.refusal_ids: list[int] = []
        self.ambiguous_ids: list[int] = []

    def check(self, pools: Pools) -> None:
        """The prompt count must fit the harmful evaluation pool; the anchors must exist."""
        if self.num_prompts > len(pools.eval_harmful):
            raise ConfigError(
                f"eval.diagnostics.num_prompts={self.num_prompts} but the harmful evaluation pool holds "
                f"{len(pools.eval_harmful)} prompts; use num_prompts <= {len(pools.eval_harmful)}"
            )
        self.anchor.check(pools)

    def start(self, model, tokenizer, pools: Pools) -> None:
        """Cache everything measured against the start of the attack (call before the first step)."""
        self.check(pools)
        refusal, ambiguous = refusal_start_tokens(
            tokenizer,
            responses(pools.align_harmful),
            responses(pools.align_compliant) + responses(pools.attack_harmful),
        )
        self.refusal_ids, self.ambiguous_ids = sorted(refusal), sorted(ambiguous)
        log.info(
            "diagnostics: %d refusal-start tokens (%s), %d ambiguous left out (%s)",
            len(refusal),
            tokenizer.convert_ids_to_tokens(self.refusal_ids),
            len(ambiguous),
            tokenizer.convert_ids_to_tokens(self.ambiguous_ids),
        )
        device = next(model.parameters()).device
        batch = encode_prompts(tokenizer, pools.eval_harmful[: self.num_prompts], padding_side="right")
        self.ids, self.mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        self.trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        with isolated(model):
            self.anchor.setup(_View(model, tokenizer, pools))
            self.hidden_start = lm_head_input(model, self.ids, self.mask).float()
            # On the CPU: a full fine-tuning copy of a 7B model would not fit beside it on the GPU.
            self.params_start = {n: p.detach().float().cpu().clone() for n, p in self.trainable.items()}
            self.lora_start = lora_deltas(model)

    def measure(self, model) -> dict[str, float]:
        """Every diagnostic of the current model (no gradient, eval mode, state restored)."""
        with isolated(model):
            hidden = lm_head_input(model, self.ids, self.mask).float()
            values = {
                "anchor_distance": float(self.anchor.distance(model)),
                "param_distance": self.param_distance(),
                "harmful_drift": self.drift(hidden),
                "refusal_start_prob": self.refusal_probability(model, hidden),
            }
            if self.lora_start:
                now = lora_deltas(model)
                values["lora_delta_norm"] = float(sum((now[k] - self.lora_start[k]).pow(2).sum() for k in now) ** 0.5)
        return values

    def param_distance(self) -> float:
        total = sum((p.detach().float().cpu() - self.params_start[n]).pow(2).sum() for n, p in self.trainable.items())
        return float(total) ** 0.5

    def drift(self, hidden: torch.Tensor) -> float:
        """Mean over prompts of the L2 norm of the change of the final hidden states over the prompt's real tokens."""
        change = (hidden - self.hidden_start).pow(2).sum(-1) * self.mask
        return float(change.sum(-1).sqrt().mean())

    def refusal_probability(self, model, hidden: torch.Tensor) -> float:
        """Mean over prompts of P(first answer token is a refusal start), from the LM head at the last prompt token."""
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, last_token_index(self.mask)]
        head = model.get_output_embeddings()
        probs = head(last.to(head.weight.dtype)).float().softmax(-1)
        return float(probs[:, self.refusal_ids].sum(-1).mean())

    def release(self) -> None:
        """Drop the references (model-sized for full fine-tuning) once the attack is over."""
        for name in ("ids", "mask", "trainable", "hidden_start", "params_start", "lora_start"):
            self.__dict__.pop(name, None)


def epoch_of(trainer, pl_module, step: int) -> float:
    """Epochs of training done after ``step`` optimizer steps (fractional between epoch ends)."""
    per_epoch = math.ceil(trainer.num_training_batches / max(1, pl_module.grad_accum))
    return round(step / max(1, per_epoch), 6)


def values(record: dict[str, float]) -> dict[str, float]:
    """A record without its position (step, epoch)."""
    return {k: v for k, v in record.items() if k not in ("step", "epoch")}


class _View:
    """What ``SBR.setup`` reads from the LightningModule: model, tokenizer, pools."""

    def __init__(self, model, tokenizer, pools):
        self.model, self.tokenizer, self.pools = model, tokenizer, pools


def lora_deltas(model) -> dict[str, torch.Tensor]:
    """``scaling * B @ A`` of every active LoRA layer (peft), in fp32 on the CPU; empty without LoRA."""
    deltas = {}
    for name, module in model.named_modules():
        if not (hasattr(module, "lora_A") and hasattr(module, "lora_B") and hasattr(module, "scaling")):
            continue
        for adapter in module.lora_A:
            a = module.lora_A[adapter].weight.detach().float()
            b = module.lora_B[adapter].weight.detach().float()
            deltas[f"{name}.{adapter}"] = (module.scaling[adapter] * (b @ a)).cpu()
    return deltas


class DiagnosticsCallback(pl.Callback):
    """Measure every ``every`` optimizer steps of the attack, at its start and at its end; log ``diag/*``."""

    def __init__(self, pools: Pools, every: int = 10, num_prompts: int = 16):
        if every < 1:
            raise ConfigError(f"eval.diagnostics.every={every} must be >= 1 (turn diagnostics off with enabled=false)")
        self.pools = pools
        self.every = every
        self.diagnostics = Diagnostics(num_prompts)
        self.diagnostics.check(pools)
        self.records: list[dict[str, float]] = []
        self.seconds = 0.0
        self._last_step = -1

    def on_train_start(self, trainer, pl_module) -> None:
        started = time.perf_counter()
        self.diagnostics.start(pl_module.model, pl_module.tokenizer, self.pools)
        self.seconds += time.perf_counter() - started
        self._record(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step != self._last_step and step % self.every == 0:
            self._record(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._last_step:
            self._record(trainer, pl_module)
        self.diagnostics.release()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.diagnostics.release()

    def _record(self, trainer, pl_module) -> None:
        started = time.perf_counter()
        step = trainer.global_step
        record = {"step": step, "epoch": epoch_of(trainer, pl_module, step)}
        record.update(self.diagnostics.measure(pl_module.model))
        for name, value in trainer.callback_metrics.items():
            if name.startswith(f"{pl_module.stage}/loss"):
                record[name.split("/", 1)[1]] = float(value)
        self.records.append(record)
        self._last_step = step
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"diag/{k}": v for k, v in values(record).items()}, step=step)
        self.seconds += time.perf_counter() - started

    def flat(self) -> dict[str, float]:
        """``diag/<name>_final`` of the last record, and the time the diagnostics took."""
        final = {f"diag/{k}_final": v for k, v in values(self.records[-1]).items()} if self.records else {}
        return {**final, "time/diagnostics_s": self.seconds}
