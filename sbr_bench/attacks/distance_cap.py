"""Distance cap: the attacker's weights never leave an L2 ball of radius ``max_distance`` around the aligned ones.

The SBR paper's stress test of parameter-distance defenses (arXiv 2605.05995, section 3,
its motivation experiments): with ``||theta - theta_base||_2 < 1`` enforced, the
harmful score still rose from 8 to 73 while the distance stayed about 0.9. A defense that only
keeps the weights close (L2-SP, EWC, Lisa's proximal term) therefore cannot by itself keep a model
safe; this callback reproduces the constraint so that any defense can be tested under it.

After every optimizer step the update is projected back onto the ball (projected gradient
descent; the optimizer's moments are left as they are):

- full fine-tuning: ``theta <- theta0 + (theta - theta0) * min(1, R / d)``, the Euclidean
  projection, ``d = ||theta - theta0||_2`` over every trainable weight;
- LoRA, ``space="merged"`` (default): the distance of the *model's* weights, which for a LoRA is
  the merged change ``d^2 = sum over adapted modules of ||scaling * B @ A||_F^2``. Scaling every B
  by ``R / d`` scales every ``Delta W`` by the same factor, which is the Euclidean projection onto
  the ball in ``Delta W`` space (a radial scaling of one vector). The Frobenius norm is computed
  from r x r matrices, ``||B A||_F^2 = sum((B^T B) * (A A^T))``, never from the full ``Delta W``.
  This is the default because the paper bounds the distance between models, whatever the
  parametrisation of the update;
- LoRA, ``space="params"``: the distance of the adapter's own parameters from their initial values
  (A from its random init, B from 0), projected radially in that space. A parameter-space defense
  that regularises the LoRA matrices sees this one.

Trainable weights outside LoRA modules (none in the shipped adapters) count by their own change in
both spaces.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch

from sbr_bench.errors import ConfigError

SPACES = ("merged", "params")


def lora_factors(model) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter, float]]:
    """(A, B, scaling) of every active LoRA adapter of ``model`` whose B trains (empty without LoRA)."""
    factors = []
    for module in model.modules():
        lora_a, lora_b, scaling = (getattr(module, k, None) for k in ("lora_A", "lora_B", "scaling"))
        if not isinstance(lora_a, torch.nn.ModuleDict) or not isinstance(lora_b, torch.nn.ModuleDict):
            continue
        for name in getattr(module, "active_adapters", list(lora_a.keys())):
            if name in lora_a and name in lora_b and lora_b[name].weight.requires_grad:
                factors.append((lora_a[name].weight, lora_b[name].weight, float(scaling[name])))
    return factors


def merged_sq_norm(a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """``||scaling * B @ A||_F^2`` from r x r Gram matrices (A: r x in, B: out x r), in fp32."""
    a, b = a.detach().float(), b.detach().float()
    return scaling**2 * ((b.T @ b) * (a @ a.T)).sum()


class DistanceCap(pl.Callback):
    """Project the attacker's update onto ``||theta - theta_aligned||_2 <= max_distance`` after every optimizer step.

    The distance after each projection is logged as ``<stage>/distance`` (the pipeline records its
    last value as ``attack/distance_final``); ``summary()`` gives the largest distance seen after a
    projection, the largest before one and how many steps were projected.
    """

    def __init__(self, max_distance: float = 1.0, space: str = "merged"):
        super().__init__()
        if not max_distance > 0:
            raise ConfigError(f"attack.distance_cap.max_distance={max_distance} must be > 0")
        if space not in SPACES:
            raise ConfigError(f"attack.distance_cap.space={space} is not one of: {', '.join(SPACES)}")
        self.max_distance = float(max_distance)
        self.space = space
        self.history: list[tuple[int, float, float]] = []  # (step, distance before, distance after)
        self._factors: list[tuple[torch.nn.Parameter, torch.nn.Parameter, float]] = []
        self._origins: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self._last_step = 0

    def bind(self, model) -> None:
        """Take the current weights as the aligned ones (the centre of the ball)."""
        self._factors = lora_factors(model) if self.space == "merged" else []
        in_factors = {id(p) for a, b, _ in self._factors for p in (a, b)}
        self._origins = [
            (p, p.detach().clone()) for p in model.parameters() if p.requires_grad and id(p) not in in_factors
        ]
        self._last_step = 0

    def distance(self) -> float:
        """The current L2 distance from the aligned weights in the chosen space."""
        total = torch.zeros((), dtype=torch.float64)
        for a, b, scaling in self._factors:
            total += merged_sq_norm(a, b, scaling).double().cpu()
        for p, p0 in self._origins:
            total += (p.detach().float() - p0.float()).pow(2).sum().double().cpu()
        return math.sqrt(float(total))

    @torch.no_grad()
    def project(self) -> tuple[float, float]:
        """Scale the update radially onto the ball when it lies outside; returns (before, after)."""
        before = self.distance()
        if before <= self.max_distance:
            return before, before
        factor = self.max_distance / before
        for _, b, _ in self._factors:
            b.mul_(factor)  # every Delta W = scaling * B @ A scales by the same factor
        for p, p0 in self._origins:
            p.sub_(p0).mul_(factor).add_(p0)
        return before, self.distance()

    def on_train_start(self, trainer, pl_module) -> None:
        self.bind(pl_module.model)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last_step:
            return  # inside a gradient-accumulation window: no optimizer step, nothing moved
        self._last_step = trainer.global_step
        before, after = self.project()
        self.history.append((trainer.global_step, before, after))
        pl_module.log(f"{pl_module.stage}/distance", after, on_step=True, on_epoch=False)

    def summary(self) -> dict[str, float]:
        """Flat metrics for metrics.json: the largest distance after / before a projection, the projected steps."""
        if not self.history:
            return {}
        return {
            "distance_max": max(h[2] for h in self.history),
            "distance_max_unprojected": max(h[1] for h in self.history),
            "projections": float(sum(h[1] > self.max_distance for h in self.history)),
        }
