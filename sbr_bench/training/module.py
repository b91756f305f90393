"""The one LightningModule of every stage and every defense.

``loss = response-only task loss + sum of the defense's named terms``; every term is logged
separately as ``<stage>/loss_<name>``, next to ``<stage>/loss_task`` and ``<stage>/loss``.
A defense that needs several passes per step (``manual_optimization``) computes the micro-batch's
gradient itself; the module then accumulates and steps exactly as Lightning does otherwise
(Lightning refuses ``accumulate_grad_batches`` under manual optimization, so the module counts).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from sbr_bench.data.formatting import IGNORE_INDEX
from sbr_bench.defenses.base import Defense
from sbr_bench.errors import ConfigError
from sbr_bench.models import lm_head_input

SCHEDULERS = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class Optim:
    """AdamW settings of one stage."""

    lr: float
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    scheduler: str = "constant"
    warmup_ratio: float = 0.0
    warmup_steps: int = 0  # a count instead of warmup_ratio (the settings allow one of the two)

    def warmup(self, total_steps: int) -> int:
        """Warmup steps of a stage of ``total_steps`` optimizer steps."""
        return self.warmup_steps or int(self.warmup_ratio * total_steps)

    def __post_init__(self):
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler={self.scheduler!r} is not one of: {', '.join(SCHEDULERS)}")


def lr_lambda(scheduler: str, total_steps: int, warmup_steps: int):
    """Multiplier of the base learning rate at each optimizer step (HF Trainer's schedules)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        if scheduler == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class SafetyModule(pl.LightningModule):
    """Wraps a causal LM for one training stage (``align`` or ``attack``)."""

    def __init__(
        self,
        model,
        tokenizer,
        defense: Defense,
        optim: Optim,
        stage: str,
        pools=None,
        streams: dict[str, DataLoader] | None = None,
    ):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.defense = defense
        self.optim = optim
        self.stage = stage
        self.pools = pools
        self.streams = streams or {}
        self.automatic_optimization = not defense.manual_optimization
        self.grad_accum = 1  # micro-batches per optimizer step; set by training.fit
        # Fraction of the stage's steps trained as plain SFT before the defense acts (the toy tier
        # learns its language in the alignment stage: an alignment-stage defense acts once it speaks).
        self.defense_start = 0.0
        self._defense_from_step = 0
        self._batch_idx = 0
        self._stream_iters: dict[str, Iterator] = {}

    def on_fit_start(self) -> None:
        # from_pretrained returns eval mode and Lightning 2.6 no longer switches sub-modules.
        self.model.train()
        self._defense_from_step = int(self.defense_start * self.total_steps())
        self.defense.setup(self)

    def on_train_end(self) -> None:
        # Automatic optimization leaves the last step's gradients on the parameters; drop them, so the
        # evaluations and the next stage do not carry a gradient-sized copy of the trainable weights.
        self.model.zero_grad(set_to_none=True)

    def defense_active(self) -> bool:
        """False during the plain-SFT steps before ``defense_start``."""
        return self.trainer.global_step >= self._defense_from_step

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters this stage updates (the LoRA matrices, or every weight)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def extra_batch(self, name: str) -> dict[str, torch.Tensor]:
        """The next batch of the defense's extra dataset ``name``, on the model's device; cycles forever."""
        if name not in self.streams:
            raise KeyError(f"{type(self.defense).__name__} asked for extra data {name!r}, which extra_data() lacks")
        try:
            batch = next(self._stream_iters[name])
        except (KeyError, StopIteration):
            self._stream_iters[name] = iter(self.streams[name])  # a new epoch: the loader reshuffles
            batch = next(self._stream_iters[name])
        return {k: v.to(self.device) for k, v in batch.items()}

    def accumulate_backward(self, loss: torch.Tensor) -> None:
        """Manual optimization: accumulate ``loss``'s gradient, divided by the micro-batches per step."""
        self.manual_backward(loss / self.grad_accum)

    def accumulate_grads(self, params: list[torch.nn.Parameter], grads: list[torch.Tensor]) -> None:
        """Manual optimization: accumulate given gradients into ``.grad``, divided like ``accumulate_backward``."""
        for p, g in zip(params, grads, strict=True):
            g = g.detach() / self.grad_accum
            p.grad = g.clone() if p.grad is None else p.grad.add_(g)

    def task_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over response tokens (prompt and padding are labelled -100).

        The same value as ``model(**batch).loss``, but the LM head runs only at the positions
        that predict a response token: prompt and padding logits over the whole vocabulary are
        never computed (the LM head is a large share of a step; the prompt most of the tokens).
        """
        if getattr(self.model.config, "final_logit_softcapping", None):  # logits transformed: use HF's path
            if "window_tokens" in batch:
                raise ConfigError("attack.ce_normalization=window is not built for models with logit softcapping")
            return self.model(**batch, use_cache=False).loss
        hidden = lm_head_input(self.model, batch["input_ids"], batch["attention_mask"])
        targets = batch["labels"][:, 1:]  # position t predicts token t + 1
        keep = targets != IGNORE_INDEX
        logits = self.model.get_output_embeddings()(hidden[:, :-1][keep])
        if "window_tokens" in batch:
            # attack.ce_normalization=window: the token sum over the window's answer tokens, times the
            # micro-batches per step, which the accumulation divides by again -> one token mean per step.
            total = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
            return total / batch["window_tokens"] * self.grad_accum
        return F.cross_entropy(logits.float(), targets[keep])

    def micro_batch_position(self) -> tuple[int, int, int]:
        """(index in the accumulation window, micro-batches in this window, accumulate_grad_batches)."""
        accumulate = self.grad_accum
        start = self._batch_idx - self._batch_idx % accumulate
        window = min(accumulate, self.trainer.num_training_batches - start)
        return self._batch_idx - start, window, accumulate

    def training_step(self, batch, batch_idx):
        self._batch_idx = batch_idx
        active = self.defense_active()
        if active:
            batch = self.defense.select_batch(self, batch)
        if self.defense.manual_optimization:
            if active:
                losses = self.defense.training_step(self, batch)
            else:
                task = self.task_loss(batch)
                self.accumulate_backward(task)
                losses = {"task": task.detach()}
            self._log_losses(losses, batch)
            position, window, _ = self.micro_batch_position()
            if position == window - 1:
                optimizer = self.optimizers()
                optimizer.step()
                optimizer.zero_grad()
                self.lr_schedulers().step()
            return None
        task = self.defense.task_loss(self, batch) if active else None
        if task is None:
            task = self.task_loss(batch)
        terms = self.defense.loss_terms(self, batch) if active else {}
        total = task + sum(terms.values()) if terms else task
        self._log_losses({"task": task, **terms}, batch, total)
        return total

    def _log_losses(self, terms: dict[str, torch.Tensor], batch, total=None) -> None:
        size = batch["input_ids"].shape[0]
        for name, value in terms.items():
            self.log(
                f"{self.stage}/loss_{name}",
                value.detach(),
                prog_bar=name == "task",
                batch_size=size,
            )
        if total is not None:
            self.log(f"{self.stage}/loss", total.detach(), prog_bar=True, batch_size=size)

    def configure_optimizers(self):
        params = self.trainable_parameters()
        optim = self.optim
        optimizer = torch.optim.AdamW(
            params, lr=optim.lr, betas=(optim.adam_beta1, optim.adam_beta2), weight_decay=optim.weight_decay
        )
        total = self.total_steps()
        warmup = optim.warmup(total)
        schedule = LambdaLR(optimizer, lr_lambda(self.optim.scheduler, total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def total_steps(self) -> int:
        """Optimizer steps of the whole stage (the LR schedule's length, Lisa's budget)."""
        trainer = self.trainer
        estimated = int(trainer.estimated_stepping_batches)  # also loads the train data: batch count known
        if self.automatic_optimization or (trainer.max_steps and trainer.max_steps > 0):
            return max(1, estimated)
        per_epoch = math.ceil(trainer.num_training_batches / self.grad_accum)
        return max(1, per_epoch * trainer.max_epochs)
