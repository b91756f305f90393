"""The one LightningModule of every stage and every defense.

``loss = response-only task loss + sum of the defense's named terms``; every term is logged
separately as ``<stage>/loss_<name>``, next to ``<stage>/loss_task`` and ``<stage>/loss``.
A defense that needs several passes per step (``manual_optimization``) gets the whole step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

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
    scheduler: str = "constant"
    warmup_ratio: float = 0.0

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

    def __init__(self, model, tokenizer, defense: Defense, optim: Optim, stage: str, pools=None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.defense = defense
        self.optim = optim
        self.stage = stage
        self.pools = pools
        self.automatic_optimization = not defense.manual_optimization
        self._batch_idx = 0

    def on_fit_start(self) -> None:
        # from_pretrained returns eval mode and Lightning 2.6 no longer switches sub-modules.
        self.model.train()
        self.defense.setup(self)

    def task_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over response tokens (prompt and padding are labelled -100).

        The same value as ``model(**batch).loss``, but the LM head runs only at the positions
        that predict a response token: prompt and padding logits over the whole vocabulary are
        never computed (the LM head is a large share of a step; the prompt most of the tokens).
        """
        if getattr(self.model.config, "final_logit_softcapping", None):  # logits transformed: use HF's path
            return self.model(**batch, use_cache=False).loss
        hidden = lm_head_input(self.model, batch["input_ids"], batch["attention_mask"])
        targets = batch["labels"][:, 1:]  # position t predicts token t + 1
        keep = targets != IGNORE_INDEX
        logits = self.model.get_output_embeddings()(hidden[:, :-1][keep])
        return F.cross_entropy(logits.float(), targets[keep])

    def micro_batch_position(self) -> tuple[int, int, int]:
        """(index in the accumulation window, micro-batches in this window, accumulate_grad_batches)."""
        accumulate = self.trainer.accumulate_grad_batches
        start = self._batch_idx - self._batch_idx % accumulate
        window = min(accumulate, self.trainer.num_training_batches - start)
        return self._batch_idx - start, window, accumulate

    def training_step(self, batch, batch_idx):
        self._batch_idx = batch_idx
        if self.defense.manual_optimization:
            losses = self.defense.training_step(self, batch)
            self._log_losses(losses, batch)
            return None
        task = self.task_loss(batch)
        terms = self.defense.loss_terms(self, batch)
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
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.optim.warmup_ratio * total)
        schedule = LambdaLR(optimizer, lr_lambda(self.optim.scheduler, total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
