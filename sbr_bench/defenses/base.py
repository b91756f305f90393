"""The defense contract: ``Defense``, the class every defense subclasses.

A defense is a small ``torch.nn.Module`` (so cached reference tensors are buffers that follow the
model's device). Its class declares the pipeline stage it acts in (``stage``: no default, checked
when the class is defined) and implements only the hooks it needs; every hook is a no-op by default.
Each hook's docstring says when it runs and what it may do (``help(Defense)``). The checklist for a
new defense: docs/adding-a-defense.md; tests/test_defense_contract.py runs every option of
``conf/defense/`` through the contract.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from sbr_bench.data.pools import Pair

STAGES = ("align", "attack", "post")  # the pipeline stages a defense can act in, in their order


class Defense(nn.Module):
    """Base class: every hook is a no-op. A subclass declares, as class attributes:

    - ``stage`` (required): ``"align"`` (the provider's safety alignment), ``"attack"`` (the user's
      fine-tuning) or ``"post"`` (repair after fine-tuning). A subclass that declares none, or
      another value, is a ``TypeError`` when the class is defined.
    - ``manual_optimization`` (default False): True hands every micro-batch to ``training_step``.
    - ``plain_sft_at``: the settings at which the defense trains exactly as plain SFT (``{"lam": 0}``),
      or None, with a comment why, where no setting does. Every defense of the package declares it;
      tests/test_defense_contract.py checks that those settings give plain SFT's weights.
    - ``passes_per_step`` (default None: not declared): forward/backward passes per training step in
      its paper's algorithm; ``benchmarks/defense_cost.py`` compares the measured step time with it.
    """

    stage: ClassVar[str]
    manual_optimization: ClassVar[bool] = False
    plain_sft_at: ClassVar[dict[str, Any] | None]
    passes_per_step: int | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        stage = getattr(cls, "stage", None)
        if stage not in STAGES:
            declared = "declares no stage" if stage is None else f"declares stage = {stage!r}"
            raise TypeError(
                f"{cls.__module__}.{cls.__qualname__} {declared}; declare the stage it acts in as a class "
                f'attribute: stage = "align", "attack" or "post"'
            )

    def check(self, pools) -> None:
        """Validate the settings against the data, before any model loads; raise ``ConfigError``.

        Called for every defense of the job right after its config is validated, so that a bad value
        fails in the first second with one clear line instead of after the alignment stage (SBR: K
        anchors <= the anchor pool; safety_mix: k <= the refusal pool).
        """

    def extra_data(self, pools) -> dict[str, list[Pair]]:
        """Named datasets (lists of ``Pair``) the defense needs beside the stage's own.

        The name ``"mix"`` is special: those pairs are added to the stage's training data
        (safety-data mixing). Every other name becomes a stream of batches, shuffled with its own
        seed derived from the stage's, with the stage's batch size and length, that the defense
        draws from with ``module.extra_batch(name)`` (it cycles forever): Lisa's alignment data,
        Booster's and RepNoise's harmful data, EWC's Fisher data.
        """
        return {}

    def setup(self, module) -> None:
        """Once per stage, with the model on its device, before the first step (``on_fit_start``).

        Cache references (SBR's anchor states), copy reference weights (L2-SP's w0), compute the
        Fisher information (EWC). ``module`` is the stage's ``SafetyModule``: ``module.model``,
        ``module.pools``, ``module.streams``, ``module.total_steps()``. Lightning clears every
        ``.grad`` after this hook, before the first step.
        """

    def select_batch(self, module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch this micro-batch trains on, given the stage's own (Lisa swaps in alignment batches)."""
        return batch

    def task_loss(self, module, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """A replacement for the response-only cross-entropy (``module.task_loss``), or None to keep it.

        Constrained SFT reweights it token by token. Logged as ``<stage>/loss_task``.
        """
        return None

    def loss_terms(self, module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named, already weighted terms added to the task loss on this micro-batch.

        The module logs each one as ``<stage>/loss_<name>``, next to ``<stage>/loss_task`` and the
        total ``<stage>/loss``; Lightning divides the total by the micro-batches per step
        (``module.micro_batch_position()`` gives the place in the accumulation window, for a term
        computed once per step). An empty dict adds nothing.
        """
        return {}

    def training_step(self, module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Only with ``manual_optimization = True``: this micro-batch's gradient into ``.grad``; returns its losses.

        For defenses that need several forward/backward passes per step (Vaccine, Booster), or whose
        terms come from separate passes that are cheaper to backward one by one (RepNoise): the
        documented exception, not the rule. Leave this micro-batch's gradient, already divided by
        the number of micro-batches per step (``module.accumulate_backward(loss)`` and
        ``module.accumulate_grads(params, grads)`` do that), in ``.grad``, and nothing else; the
        module steps the optimizer and clears ``.grad`` at the end of the accumulation window. The
        returned losses are logged as ``<stage>/loss_<name>``.
        """
        raise NotImplementedError(f"{type(self).__name__} sets manual_optimization but has no training_step")

    def repair(self, model) -> None:
        """Post-fine-tuning defenses (``stage = "post"``): repair the attacked model in place, before evaluation."""

    def effective_settings(self) -> dict[str, Any]:
        """Values derived from the settings for this run (after ``setup``), for the record; {} if none.

        Recorded in the job's ``settings.json`` next to the defense's config (Lisa's K1 / K2 for the
        run's step budget, safety_mix's k).
        """
        return {}
