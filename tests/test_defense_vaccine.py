"""Vaccine against independent computations on the toy model (LoRA adapter, a few samples)."""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import pytest
import torch
from helpers import bare_module, check_settings, first_batch, short_align_fit, trainable, trainable_grads

from sbr_bench.defenses.none import NoDefense
from sbr_bench.defenses.vaccine import Vaccine, attention_perturbation
from sbr_bench.errors import ConfigError
from sbr_bench.models.adapters import apply_adapter

RHO = 2.0


@pytest.fixture
def batch(toy, pools):
    _, tokenizer = toy
    return first_batch(tokenizer, pools.align_harmful[:2] + pools.align_benign[:1], max_length=96)


def attention_modules(model):
    """Each decoder layer's attention block, found without the package's helpers."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [layer.self_attn for layer in inner.model.layers]


def activation_grads_by_hand(model, batch):
    """dL/de_l for every attention output, by retain_grad on the outputs and HF's own loss."""
    outputs, handles = [], []

    def keep(_module, _inputs, out):
        out[0].retain_grad()
        outputs.append(out[0])

    for attn in attention_modules(model):
        handles.append(attn.register_forward_hook(keep))
    try:
        loss = model(**batch, use_cache=False).loss
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    model.zero_grad(set_to_none=True)
    return [o.grad.detach() for o in outputs]


@contextmanager
def shifted_attention(model, shift):
    """Wrap each attention block's forward (not a hook) so that it returns e_l + shift(l, e_l)."""
    modules = attention_modules(model)
    for index, attn in enumerate(modules):
        original = attn.forward

        def forward(*args, _original=original, _index=index, **kwargs):
            out, *rest = _original(*args, **kwargs)
            return (out + shift(_index, out), *rest)

        attn.forward = forward
    try:
        yield
    finally:
        for attn in modules:
            del attn.forward


def test_perturbation_has_global_norm_rho_along_the_activation_gradient(lora_toy, batch):
    model, tokenizer = lora_toy
    module = bare_module(model, tokenizer, Vaccine(rho=RHO))
    _, eps = attention_perturbation(module, batch, RHO)
    assert all(p.grad is None for p in model.parameters()), "pass 1 must compute no weight gradient"

    by_hand = activation_grads_by_hand(model, batch)
    assert len(eps) == len(by_hand) == 2
    flat_eps = torch.cat([e.flatten() for e in eps])
    flat_g = torch.cat([g.flatten() for g in by_hand])
    assert flat_g.norm() > 0
    torch.testing.assert_close(flat_eps.norm(), torch.tensor(RHO), rtol=1e-5, atol=0)
    cosine = torch.dot(flat_eps, flat_g) / (flat_eps.norm() * flat_g.norm())
    assert cosine.item() == pytest.approx(1.0, abs=1e-5)
    # ONE global norm: the per-layer norms keep the activation gradient's proportions
    ratios = [(e.norm() / g.norm()).item() for e, g in zip(eps, by_hand, strict=True)]
    assert ratios == pytest.approx([RHO / flat_g.norm().item()] * 2, rel=1e-4)


def test_pass_two_gradient_is_that_of_the_shifted_model(lora_toy, batch):
    model, tokenizer = lora_toy
    g = activation_grads_by_hand(model, batch)
    norm = math.sqrt(sum(float((x.double() ** 2).sum()) for x in g))
    eps = [RHO * x / norm for x in g]
    with shifted_attention(model, lambda i, _out: eps[i]):
        expected = trainable_grads(model(**batch, use_cache=False).loss, model)
    plain = trainable_grads(model(**batch, use_cache=False).loss, model)

    # A micro-batch that is not the first of its window: earlier gradient kept, this one divided by 2.
    earlier = [torch.full_like(p, 0.25) for p in trainable(model).values()]
    for p, e in zip(trainable(model).values(), earlier, strict=True):
        p.grad = e.clone()
    module = bare_module(model, tokenizer, Vaccine(rho=RHO), grad_accum=2)
    losses = Vaccine(rho=RHO).training_step(module, batch)

    assert set(losses) == {"task", "perturbed"}
    assert losses["perturbed"] > losses["task"]  # a first-order ascent direction raises the loss
    got = [p.grad - e for p, e in zip(trainable(model).values(), earlier, strict=True)]
    for x, y in zip(got, expected, strict=True):
        torch.testing.assert_close(2 * x, y, rtol=1e-4, atol=1e-6)
    moved = sum(float((y - z).norm()) for y, z in zip(expected, plain, strict=True))
    assert moved > 1e-2 * sum(float(z.norm()) for z in plain), "rho too small for the test to mean anything"


def test_rho_zero_is_plain_sft_exactly(lora_toy, batch):
    model, tokenizer = lora_toy
    module = bare_module(model, tokenizer, Vaccine(rho=0))
    plain = trainable_grads(module.task_loss(batch), model)
    Vaccine(rho=0).training_step(module, batch)
    for p, g in zip(trainable(model).values(), plain, strict=True):
        assert torch.equal(p.grad, g)


def test_random_vaccine_adds_gaussian_noise_of_variance_rho(lora_toy, batch):
    model, tokenizer = lora_toy
    rho = 0.5
    with torch.random.fork_rng():
        torch.manual_seed(3)
        module = bare_module(model, tokenizer, Vaccine(rho=rho, perturbation="random"))
        losses = module.defense.training_step(module, batch)
    got = [p.grad.clone() for p in trainable(model).values()]
    assert set(losses) == {"perturbed"}

    with torch.random.fork_rng():
        torch.manual_seed(3)
        noise = lambda _i, out: math.sqrt(rho) * torch.randn(out.shape)  # noqa: E731
        with shifted_attention(model, noise):
            expected = trainable_grads(module.task_loss(batch), model)
    plain = trainable_grads(module.task_loss(batch), model)
    for x, y in zip(got, expected, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(x, z) for x, z in zip(got, plain, strict=True))


def test_layers_without_trainable_weights_upstream_still_get_a_perturbation(toy, batch):
    model, tokenizer = toy
    model = apply_adapter(copy.deepcopy(model), kind="lora", r=4, target_modules=["down_proj"], seed=0)
    module = bare_module(model, tokenizer, Vaccine(rho=RHO))
    _, eps = attention_perturbation(module, batch, RHO)
    assert torch.cat([e.flatten() for e in eps]).norm().item() == pytest.approx(RHO, rel=1e-5)
    assert eps[0].norm() > 0  # layer 0's attention output has no trainable weight before it
    module.defense.training_step(module, batch)
    assert all(p.grad is not None for p in trainable(model).values())


@pytest.mark.parametrize("failing_call", [1, 2])
def test_hooks_are_removed_when_a_pass_raises(lora_toy, batch, failing_call):
    model, tokenizer = lora_toy
    module = bare_module(model, tokenizer, Vaccine(rho=RHO))
    calls = []
    real = module.task_loss

    def task_loss(b):
        calls.append(1)
        if len(calls) == failing_call:
            raise RuntimeError("boom")
        return real(b)

    module.task_loss = task_loss
    with pytest.raises(RuntimeError, match="boom"):
        module.defense.training_step(module, batch)
    assert all(not attn._forward_hooks for attn in attention_modules(model))


def test_real_fit_accumulates_and_steps_like_automatic_optimization(toy, pools, tmp_path):
    model, tokenizer = toy
    start = apply_adapter(copy.deepcopy(model), kind="lora", r=4, seed=0)
    _, plain = short_align_fit(copy.deepcopy(start), tokenizer, pools, NoDefense(), tmp_path)
    module, zero = short_align_fit(copy.deepcopy(start), tokenizer, pools, Vaccine(rho=0), tmp_path)
    assert module.trainer.global_step == 6  # 2 epochs x ceil(5 / 2) optimizer steps
    assert module.total_steps() == 6  # the LR schedule's length
    assert {"align/loss_task", "align/loss_perturbed"} <= set(module.trainer.callback_metrics)
    assert any(not torch.equal(x, y) for x, y in zip(trainable(start).values(), zero, strict=True))  # it did train
    for x, y in zip(plain, zero, strict=True):
        assert torch.equal(x, y)  # same gradients, same accumulation, same LR schedule: bit for bit


def test_config_instantiates_an_alignment_stage_defense(make_cfg):
    from hydra.utils import instantiate

    cfg = make_cfg(["model=toy", "defense=vaccine"])
    defense = instantiate(cfg.defense)
    assert isinstance(defense, Vaccine) and defense.stage == "align" and defense.manual_optimization
    assert (defense.rho, defense.perturbation) == (2.0, "gradient")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rho": -1}, r"defense.rho=-1 must be >= 0"),
        ({"rho": float("nan")}, r"defense.rho=nan must be a finite number"),
        ({"perturbation": "uniform"}, r"defense.perturbation=uniform is not one of: gradient, random"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        check_settings(Vaccine, **kwargs)
