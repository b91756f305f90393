"""The defense contract.

A defense is a small ``torch.nn.Module`` (so cached reference tensors are buffers that follow the
model's device). It names the pipeline stage it acts in and implements only the hooks it needs;
every hook is a no-op by default.

- ``stage``: ``"align"`` (the provider's safety alignment), ``"attack"`` (the user's fine-tuning)
  or ``"post"`` (repair after fine-tuning).
- ``check(pools)``: validate the defense's settings against the data before any training, so a
  bad value fails in the first second instead of after the alignment stage.
- ``extra_data(pools)``: named datasets (lists of ``Pair``) the defense needs beside the stage's
  own. The name ``"mix"`` is special: those pairs are added to the stage's training data
  (safety-data mixing). Every other name becomes a stream of batches, shuffled with the stage's
  seed, batch size and length, that the defense draws from with ``module.extra_batch(name)``
  (Lisa's alignment data, Booster's and RepNoise's harmful data).
- ``setup(module)``: once the model is on its device, before the first step of the stage: cache
  references (SBR's anchor states), copy reference weights, compute Fisher information.
- ``select_batch(module, batch)``: the batch this step trains on (Lisa swaps in alignment batches).
- ``task_loss(module, batch)``: a replacement for the response-only cross-entropy, or ``None`` to
  keep it (constrained SFT reweights it token by token).
- ``loss_terms(module, batch)``: named, already weighted terms added to the task loss; the module
  logs each one.
- ``training_step(module, batch)``: only for defenses that need several forward/backward passes
  per step (Vaccine, Booster); ``manual_optimization = True`` makes the module hand over the
  micro-batch. The defense leaves this micro-batch's gradient, already divided by the number of
  micro-batches per step (``module.accumulate_backward`` and ``module.accumulate_grads`` do that), in ``.grad`` and
  returns its losses for logging; the module steps the optimizer at the end of the accumulation
  window. This is the documented exception, not the rule.
- ``repair(model)``: post-fine-tuning defenses.
- ``effective_settings()``: values the defense derived from its settings and the run (Lisa's K1 / K2
  for the run's step budget), recorded in the job's ``settings.json`` next to its config.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sbr_bench.data.pools import Pair


class Defense(nn.Module):
    """Base class: every hook is a no-op."""

    stage: str = "attack"
    manual_optimization: bool = False

    def check(self, pools) -> None:
        """Raise ConfigError with one clear line when the settings cannot work with these pools."""

    def extra_data(self, pools) -> dict[str, list[Pair]]:
        """Named datasets beside the stage's own; ``"mix"`` is added to the stage's training data."""
        return {}

    def setup(self, module) -> None:
        """Called once per stage, after the model is on its device."""

    def select_batch(self, module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch this step trains on."""
        return batch

    def task_loss(self, module, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """A replacement for the response-only cross-entropy, or None to keep it."""
        return None

    def loss_terms(self, module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms added to the task loss."""
        return {}

    def training_step(self, module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This micro-batch's gradient into ``.grad``, for ``manual_optimization`` defenses; returns losses."""
        raise NotImplementedError(f"{type(self).__name__} sets manual_optimization but has no training_step")

    def repair(self, model) -> None:
        """Post-fine-tuning repair of the model, in place."""

    def effective_settings(self) -> dict[str, Any]:
        """Values derived from the settings for this run (after ``setup``), for the record; {} if none."""
        return {}
