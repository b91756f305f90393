"""The defense contract.

A defense is a small ``torch.nn.Module`` (so cached reference tensors are buffers that follow the
model's device). It names the pipeline stage it acts in and implements only the hooks it needs;
every hook is a no-op by default.

- ``stage``: ``"align"`` (the provider's safety alignment), ``"attack"`` (the user's fine-tuning)
  or ``"post"`` (repair after fine-tuning).
- ``check(pools)``: validate the defense's settings against the data before any training, so a
  bad value fails in the first second instead of after the alignment stage.
- ``setup(module)``: once the model is on its device, before the first step of the stage: cache
  references (SBR's anchor states), copy reference weights, compute Fisher information.
- ``loss_terms(module, batch)``: named, already weighted terms added to the task loss; the module
  logs each one.
- ``extra_data()``: datasets the defense needs beside the stage's own.
- ``training_step(module, batch)``: only for defenses that need several forward/backward passes
  per step (Vaccine, Booster); setting ``manual_optimization = True`` makes the module hand the
  whole step over. This is the documented exception, not the rule.
- ``repair(model)``: post-fine-tuning defenses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Defense(nn.Module):
    """Base class: every hook is a no-op."""

    stage: str = "attack"
    manual_optimization: bool = False

    def check(self, pools) -> None:
        """Raise ValueError with one clear line when the settings cannot work with these pools."""

    def setup(self, module) -> None:
        """Called once per stage, after the model is on its device."""

    def loss_terms(self, module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms added to the task loss."""
        return {}

    def extra_data(self) -> dict[str, Any]:
        """Datasets the defense needs beside the stage's own."""
        return {}

    def training_step(self, module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The whole optimisation step, for ``manual_optimization`` defenses."""
        raise NotImplementedError(f"{type(self).__name__} sets manual_optimization but has no training_step")

    def repair(self, model) -> None:
        """Post-fine-tuning repair of the model, in place."""
