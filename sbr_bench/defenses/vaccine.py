"""``defense=vaccine``: perturbation-aware alignment (Huang et al., NeurIPS 2024, arXiv 2402.01109).

An alignment-stage defense. Harmful fine-tuning drifts the hidden embeddings of the alignment
data; Vaccine aligns the model under the worst-case bounded shift of every layer's attention
output, so that the aligned behaviour survives such a drift:

    min_w max_{||eps|| <= rho} L( (f~_{w_L, eps_L} o ... o f~_{w_1, eps_1} o T)(x), y ),
    f~_{w_l, eps_l}(e_{l-1}) = f_{w_l}(e_{l-1}) + eps_l

with the first-order solution of the inner max, one global norm over all layers:

    eps_l* = rho * g_l / ||(g_1, ..., g_L)||,    g_l = dL / de_l

Each micro-batch takes two passes (``manual_optimization``):

1. forward on the alignment batch, gradient of the task loss with respect to every attention
   output e_l (``torch.autograd.grad`` with respect to the captured activations: no weight
   gradient is computed in this pass);
2. forward again with forward hooks adding the constant eps_l to e_l; only this pass's
   gradient is accumulated and stepped by the optimizer.

Paper symbols -> arguments:
    rho      -> ``rho`` (2: the official code's default and its README example; paper sweep
                0.01 - 10, main-table value not stated, the Booster repo reruns Vaccine with 5)
    e_l      -> ``output[0]`` of ``layer.self_attn`` for every decoder layer: the attention block
                output after ``o_proj``, before the residual add (the official code hooks every
                LlamaAttention / OPTAttention module; the MLP is not perturbed). Every token
                position is perturbed, prompt and padding included, as in the code (padding
                positions get a zero gradient and therefore a zero shift).
    L        -> the response-only cross-entropy of the stage (``module.task_loss``)

Decisions on the official code (git-disl/Vaccine ``trainer.py``):
    ``perturbation``  "gradient" (default: Vaccine) or "random" (the paper's random-perturbation
                      ablation, the code's RandomVaccineTrainer: one pass with eps_l ~ N(0, rho I)
                      drawn afresh at every forward; ``rho`` is then the noise VARIANCE, the
                      standard deviation is sqrt(rho), exactly as that trainer reads ``--rho``).
    accumulation      the code calls ``model.zero_grad()`` between its passes, which would discard
                      the earlier micro-batches of an accumulation window (its scripts use
                      gradient_accumulation_steps 1, so it never matters there); pass 1 here
                      computes no weight gradient, so accumulation is exact. Not an option.
    norm guard        eps = rho * g / (||g|| + 1e-7), as the code. The code also divides g by the
                      accumulation steps before normalising, which only changes the 1e-7 guard.
    not implemented   "accelerated Vaccine" (recompute eps only every tau steps, paper section 5):
                      the activations change shape from batch to batch.
    hooks             gradient checkpointing would re-run the forward hooks during backward; the
                      benchmark does not enable it.

Cost: two forward/backward passes per step (paper Table 5: 0.73 s vs 0.37 s per step), plus one
activation-sized tensor per layer for eps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ClassVar, Literal

import torch

from sbr_bench.defenses.base import Defense
from sbr_bench.models import decoder_layers
from sbr_bench.schema import NonNegativeFloat

NORM_GUARD = 1e-7  # the official code's rho / (||g|| + 1e-7)


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of the concatenation of ``tensors``, in float32."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t, dtype=torch.float32) for t in tensors]))


@contextmanager
def attention_hooks(model, edit: Callable[[int, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """While open, every decoder layer's attention output ``e_l`` is replaced by ``edit(l, e_l)``.

    The hooks are removed on leaving, also when the pass inside raises.
    """

    def hook_for(index: int):
        def hook(_module, _inputs, output):
            if isinstance(output, tuple):  # (attn_output, attn_weights) in HF attention modules
                return (edit(index, output[0]), *output[1:])
            return edit(index, output)

        return hook

    handles = []
    try:
        for index, layer in enumerate(decoder_layers(model)):
            handles.append(layer.self_attn.register_forward_hook(hook_for(index)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def attention_perturbation(
    module, batch: dict[str, torch.Tensor], rho: float
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Pass 1: the task loss at the current weights and eps_l = rho * g_l / (||(g_1..g_L)|| + 1e-7) per layer."""
    captured: list[torch.Tensor] = []

    def capture(_index: int, output: torch.Tensor) -> torch.Tensor:
        if not output.requires_grad:
            # Nothing trainable upstream of this layer (e.g. LoRA on the MLPs only): make the
            # activation a leaf of its own so that its gradient still exists.
            output = output.detach().requires_grad_(True)
        captured.append(output)
        return output

    with attention_hooks(module.model, capture):
        loss = module.task_loss(batch)
    # Gradient with respect to the activations only: the weights' gradients are never computed.
    grads = torch.autograd.grad(loss, captured)
    scale = rho / (global_norm(list(grads)) + NORM_GUARD)
    return loss.detach(), [(g * scale).to(g.dtype) for g in grads]


class Vaccine(Defense):
    """Perturbation-aware alignment; see the module docstring for the math and options."""

    stage = "align"
    manual_optimization = True
    plain_sft_at: ClassVar[dict] = {"rho": 0}  # eps = 0: the second pass is the clean one (still two passes)
    passes_per_step = 2

    def __init__(self, rho: NonNegativeFloat = 2.0, perturbation: Literal["gradient", "random"] = "gradient"):
        super().__init__()
        self.rho = float(rho)
        self.perturbation = perturbation

    def perturbed_loss(self, module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss whose gradient trains the weights (pass 2, with its graph) and the losses to log."""
        if self.perturbation == "random":
            std = math.sqrt(self.rho)
            with attention_hooks(module.model, lambda _i, e: e + std * torch.randn_like(e)):
                loss = module.task_loss(batch)
            return loss, {"perturbed": loss.detach()}
        clean, eps = attention_perturbation(module, batch, self.rho)
        with attention_hooks(module.model, lambda i, e: e + eps[i]):
            loss = module.task_loss(batch)
        return loss, {"task": clean, "perturbed": loss.detach()}

    def training_step(self, module, batch):
        """Two passes; only the perturbed pass's gradient goes into ``.grad``."""
        loss, losses = self.perturbed_loss(module, batch)
        module.accumulate_backward(loss)
        return losses
