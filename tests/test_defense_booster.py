"""Booster against an independent computation (torch.func.functional_call) on the toy model."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import bare_module, check_settings, first_batch, short_align_fit, trainable, trainable_grads
from torch.func import functional_call

from sbr_bench.defenses.booster import Booster
from sbr_bench.defenses.none import NoDefense
from sbr_bench.defenses.vaccine import Vaccine
from sbr_bench.errors import ConfigError
from sbr_bench.models.adapters import apply_adapter

LAM, ALPHA = 5.0, 0.1


@pytest.fixture
def batches(toy, pools):
    """(alignment batch: refusals + helpful answers, harmful batch: compliant answers)."""
    _, tokenizer = toy
    return (
        first_batch(tokenizer, pools.align_harmful[:2] + pools.align_benign[:1], max_length=96),
        first_batch(tokenizer, pools.align_compliant[5:8], max_length=96),
    )


def booster_by_hand(model, align, harmful, lam, alpha):
    """G_f + lam (G_h - G_h') with explicit weight tensors, HF's own loss and a global norm computed in float64."""
    names = list(trainable(model))
    w = [p.detach().clone().requires_grad_(True) for p in trainable(model).values()]

    def loss_at(weights, batch):
        return functional_call(model, dict(zip(names, weights, strict=True)), kwargs={**batch, "use_cache": False}).loss

    g_h = torch.autograd.grad(loss_at(w, harmful), w)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in g_h)).float()
    moved = [(x - alpha * g / (norm + 1e-7)).detach().requires_grad_(True) for x, g in zip(w, g_h, strict=True)]
    g_h_moved = torch.autograd.grad(loss_at(moved, harmful), moved)
    g_f = torch.autograd.grad(loss_at(w, align), w)
    correction = [lam * (a - b) for a, b in zip(g_h, g_h_moved, strict=True)]
    return g_f, correction


@pytest.fixture(params=["lora", "full"])
def adapted_toy(request, lora_toy, toy):
    """LoRA (the paper's setting) or every weight, tied embeddings included (the toy's scratch alignment)."""
    if request.param == "lora":
        return lora_toy
    model, tokenizer = toy
    return apply_adapter(copy.deepcopy(model), kind="full"), tokenizer


def test_gradient_is_the_booster_formula(adapted_toy, batches):
    model, tokenizer = adapted_toy
    align, harmful = batches
    g_f, correction = booster_by_hand(model, align, harmful, LAM, ALPHA)
    # the harmful term must matter, or the comparison below could not tell Booster from SFT
    assert sum(float(c.norm()) for c in correction) > 0.05 * sum(float(g.norm()) for g in g_f)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # the gradient of an earlier micro-batch of the window
    earlier = [torch.full_like(p, 0.25) for p in trainable(model).values()]
    for p, e in zip(trainable(model).values(), earlier, strict=True):
        p.grad = e.clone()
    module = bare_module(model, tokenizer, Booster(lam=LAM, alpha=ALPHA), grad_accum=2, harmful=harmful)
    losses = module.defense.training_step(module, align)

    for p, e, f, c in zip(trainable(model).values(), earlier, g_f, correction, strict=True):
        # Relative to each tensor's norm: the two computations differ in float32 rounding (full
        # logits vs response positions only), which lam * (G_h - G_h') amplifies to ~5e-5 for the
        # randomly initialised full model; any error in the formula is of order 1.
        expected = f + c
        assert ((2 * (p.grad - e) - expected).norm() / expected.norm()).item() < 3e-4
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), f"{name} not restored bit for bit"
    assert set(losses) == {"task", "harmful", "booster"}
    assert losses["booster"] > 0  # a normalised descent step on h lowers h


def test_lambda_zero_is_plain_sft_exactly(lora_toy, batches):
    model, tokenizer = lora_toy
    align, harmful = batches
    module = bare_module(model, tokenizer, Booster(lam=0, alpha=ALPHA), harmful=harmful)
    plain = trainable_grads(module.task_loss(align), model)
    before = [p.detach().clone() for p in trainable(model).values()]
    module.defense.training_step(module, align)
    for p, g, w in zip(trainable(model).values(), plain, before, strict=True):
        assert torch.equal(p.grad, g)
        assert torch.equal(p, w)


def test_weights_are_restored_when_the_perturbed_pass_raises(lora_toy, batches):
    model, tokenizer = lora_toy
    align, harmful = batches
    module = bare_module(model, tokenizer, Booster(), harmful=harmful)
    calls, real = [], module.task_loss

    def task_loss(b):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(b)

    module.task_loss = task_loss
    before = [p.detach().clone() for p in trainable(model).values()]
    with pytest.raises(RuntimeError, match="boom"):
        module.defense.training_step(module, align)
    assert all(torch.equal(p, w) for p, w in zip(trainable(model).values(), before, strict=True))
    assert all(p.grad is None for p in trainable(model).values())


def test_vaccine_rho_takes_the_alignment_gradient_under_vaccine_perturbation(lora_toy, batches):
    model, tokenizer = lora_toy
    align, harmful = batches
    _, correction = booster_by_hand(model, align, harmful, LAM, ALPHA)
    reference = copy.deepcopy(model)
    vaccine_module = bare_module(reference, tokenizer, Vaccine(rho=5), harmful=harmful)
    vaccine_module.defense.training_step(vaccine_module, align)  # tested against a hand computation elsewhere

    module = bare_module(model, tokenizer, Booster(lam=LAM, alpha=ALPHA, vaccine_rho=5), harmful=harmful)
    losses = module.defense.training_step(module, align)
    assert set(losses) == {"task", "perturbed", "harmful", "booster"}
    for p, v, c in zip(trainable(model).values(), trainable(reference).values(), correction, strict=True):
        torch.testing.assert_close(p.grad, v.grad + c, rtol=1e-4, atol=2e-6)


def test_real_fit_accumulates_and_steps_like_automatic_optimization(toy, pools, tmp_path):
    model, tokenizer = toy
    start = apply_adapter(copy.deepcopy(model), kind="lora", r=4, seed=0)
    _, plain = short_align_fit(copy.deepcopy(start), tokenizer, pools, NoDefense(), tmp_path)
    module, zero = short_align_fit(copy.deepcopy(start), tokenizer, pools, Booster(lam=0, num_harmful=8), tmp_path)
    assert module.trainer.global_step == 6  # 2 epochs x ceil(5 / 2) optimizer steps
    assert module.total_steps() == 6  # the LR schedule's length
    assert len(module.streams["harmful"].dataset) == 8
    assert {"align/loss_task", "align/loss_harmful", "align/loss_booster"} <= set(module.trainer.callback_metrics)
    assert any(not torch.equal(x, y) for x, y in zip(trainable(start).values(), zero, strict=True))  # it did train
    for x, y in zip(plain, zero, strict=True):
        assert torch.equal(x, y)  # same gradients, same accumulation, same LR schedule: bit for bit


def test_harmful_stream_is_the_compliant_alignment_pool(pools):
    assert Booster().extra_data(pools) == {"harmful": pools.align_compliant}
    assert Booster(num_harmful=7).extra_data(pools) == {"harmful": pools.align_compliant[:7]}
    assert {p.prompt for p in pools.align_compliant} == {p.prompt for p in pools.align_harmful}


def test_config_instantiates_an_alignment_stage_defense(make_cfg):
    from hydra.utils import instantiate

    cfg = make_cfg(["model=toy", "defense=booster"])
    defense = instantiate(cfg.defense)
    assert isinstance(defense, Booster) and defense.stage == "align" and defense.manual_optimization
    assert (defense.lam, defense.alpha, defense.num_harmful, defense.vaccine) == (5.0, 0.1, None, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lam": -1}, r"defense.lam=-1 must be >= 0"),
        ({"alpha": 0}, r"defense.alpha=0 must be > 0"),
        ({"alpha": -0.1}, r"defense.alpha=-0.1 must be > 0"),
        ({"num_harmful": 0}, r"defense.num_harmful=0 must be > 0"),
        ({"vaccine_rho": -2}, r"defense.vaccine_rho=-2 must be >= 0"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        check_settings(Booster, **kwargs)


def test_more_harmful_samples_than_the_pool_fails_before_training(pools):
    n = len(pools.align_compliant)
    with pytest.raises(ConfigError, match=rf"num_harmful=999 but the align_compliant pool holds {n} pairs"):
        Booster(num_harmful=999).check(pools)
    Booster(num_harmful=n).check(pools)
