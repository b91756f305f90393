"""L2-SP and EWC against independent computations on the toy model."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from helpers import check_settings, perturb, trainable

from sbr_bench.data.pools import Pair
from sbr_bench.defenses.ewc import EWC
from sbr_bench.defenses.l2sp import L2SP
from sbr_bench.defenses.none import NoDefense
from sbr_bench.errors import ConfigError
from sbr_bench.models.adapters import apply_adapter
from sbr_bench.training.fit import fit, stage_loaders
from sbr_bench.training.module import Optim, SafetyModule

MAX_LENGTH, BATCH_SIZE = 128, 8


@pytest.fixture
def small_pools(pools):
    """The pools, their alignment part cut short (three Fisher batches, one of them partial): seconds, not minutes."""
    return dataclasses.replace(pools, align_harmful=pools.align_harmful[:11], align_benign=pools.align_benign[:9])


def user_pairs(pools, n=24):
    return [Pair(p.prompt, p.response) for p in pools.task_train[: n - 4] + pools.attack_harmful[:4]]


def make_module(model, tokenizer, pools, defense, lr=1e-3):
    """The attack stage's module with the defense's streams, as the pipeline builds it."""
    loader, streams = stage_loaders(defense, pools, user_pairs(pools), tokenizer, MAX_LENGTH, BATCH_SIZE, seed=0)
    module = SafetyModule(model, tokenizer, defense, Optim(lr=lr), stage="attack", pools=pools, streams=streams)
    return module, loader


def test_l2sp_is_zero_at_w0_and_matches_by_hand(fresh_lora_toy, small_pools):
    model, tokenizer = fresh_lora_toy
    w0 = {n: p.detach().clone() for n, p in trainable(model).items()}
    l2sp = L2SP(lam=0.3)
    module, _ = make_module(model, tokenizer, small_pools, l2sp)
    l2sp.setup(module)
    assert l2sp.loss_terms(module, {})["l2sp"].item() == 0.0
    perturb(model, only="")
    term = l2sp.loss_terms(module, {})["l2sp"]
    delta = torch.nn.utils.parameters_to_vector(trainable(model).values()) - torch.nn.utils.parameters_to_vector(
        w0.values()
    )
    assert term.item() > 0
    torch.testing.assert_close(term, 0.3 * delta.dot(delta))
    term.backward()
    for name, p in trainable(model).items():  # d/dw lam * ||w - w0||^2 = 2 lam (w - w0)
        torch.testing.assert_close(p.grad, 2 * 0.3 * (p.detach() - w0[name]))


def fisher_by_hand(model, tokenizer, pools, reduction):
    """sum (or mean) over alignment batches of the squared gradient of HF's mean CE, batch by batch."""
    # The same stream as the defense's: the same loaders built again, first epoch.
    _, streams = stage_loaders(EWC(), pools, user_pairs(pools), tokenizer, MAX_LENGTH, BATCH_SIZE, seed=0)
    params = list(trainable(model).values())
    total = [torch.zeros_like(p) for p in params]
    batches = 0
    model.eval()
    for batch in streams["fisher"]:
        loss = model(**batch, use_cache=False).loss  # full logits, HF's shift: a different code path
        grads = torch.autograd.grad(loss, params)
        total = [t + g * g for t, g in zip(total, grads, strict=True)]
        batches += 1
    model.train()
    assert batches == -(-(len(pools.align_harmful) + len(pools.align_benign)) // BATCH_SIZE)
    return [t / batches for t in total] if reduction == "mean" else total


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_fisher_equals_squared_batch_gradients_by_hand(fresh_lora_toy, small_pools, reduction):
    model, tokenizer = fresh_lora_toy
    perturb(model)  # B != 0: A gets a gradient too (the Vaccine code's trained LoRA)
    expected = fisher_by_hand(model, tokenizer, small_pools, reduction)
    ewc = EWC(lam=1.0, fisher_reduction=reduction)
    module, _ = make_module(model, tokenizer, small_pools, ewc)
    ewc.setup(module)
    assert len(ewc.weights) == len(expected)
    for got, want in zip(ewc.weights, expected, strict=True):
        assert want.sum() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-12)


def test_fresh_lora_constrains_only_b(fresh_lora_toy, small_pools):
    model, tokenizer = fresh_lora_toy  # B = 0: the gradient w.r.t. A is zero at w0
    ewc = EWC()
    module, _ = make_module(model, tokenizer, small_pools, ewc)
    ewc.setup(module)
    for name, f in zip(trainable(model), ewc.weights, strict=True):
        if "lora_A" in name:
            assert torch.count_nonzero(f) == 0, name
        else:
            assert "lora_B" in name and f.sum() > 0, name


def test_ewc_term_matches_by_hand(fresh_lora_toy, small_pools):
    model, tokenizer = fresh_lora_toy
    perturb(model)
    fisher = fisher_by_hand(model, tokenizer, small_pools, "sum")
    w0 = [p.detach().clone() for p in trainable(model).values()]
    ewc = EWC(lam=1e3)
    module, _ = make_module(model, tokenizer, small_pools, ewc)
    ewc.setup(module)
    assert ewc.loss_terms(module, {})["ewc"].item() == 0.0
    perturb(model, seed=2, only="")
    by_hand = sum(
        (f * (p.detach() - p0) ** 2).sum() for f, p, p0 in zip(fisher, trainable(model).values(), w0, strict=True)
    )
    term = ewc.loss_terms(module, {})["ewc"]
    assert term.item() > 0
    torch.testing.assert_close(term.detach(), 1e3 * by_hand, rtol=1e-4, atol=0)


def test_setup_leaves_no_gradients_and_restores_modes(fresh_lora_toy, small_pools):
    model, tokenizer = fresh_lora_toy
    perturb(model)
    model.train()
    frozen_part = model.get_base_model().model.layers[0]
    frozen_part.eval()  # a mixed state must come back as it was, module by module
    modes = {name: m.training for name, m in model.named_modules()}
    ewc = EWC()
    module, _ = make_module(model, tokenizer, small_pools, ewc)
    ewc.setup(module)
    assert all(p.grad is None for p in model.parameters())
    assert {name: m.training for name, m in model.named_modules()} == modes


@pytest.mark.parametrize("defense", [L2SP(lam=0.0), EWC(lam=0.0)], ids=["l2sp", "ewc"])
def test_lam_zero_gives_the_plain_sft_loss_and_gradient_exactly(fresh_lora_toy, small_pools, defense):
    model, tokenizer = fresh_lora_toy
    module, loader = make_module(model, tokenizer, small_pools, defense)
    defense.setup(module)
    perturb(model, only="")  # away from w0, where the term's gradient would vanish anyway
    batch = next(iter(loader))
    params = list(trainable(model).values())
    plain = module.task_loss(batch)
    terms = defense.loss_terms(module, batch)
    assert set(terms) == {defense.term}
    total = module.task_loss(batch) + sum(terms.values())
    assert torch.equal(total, plain)
    for g_total, g_plain in zip(torch.autograd.grad(total, params), torch.autograd.grad(plain, params), strict=True):
        assert torch.equal(g_total, g_plain)


def train(model, tokenizer, pools, defense, tmp_path, steps=3):
    """A few optimizer steps through the real Trainer; the trainable weights after them."""
    module, loader = make_module(model, tokenizer, pools, defense, lr=1e-2)
    fit(module, loader, {"accelerator": "cpu", "enable_progress_bar": False}, None, str(tmp_path), max_steps=steps)
    return {n: p.detach().clone() for n, p in trainable(model).items()}


def test_lam_zero_trains_exactly_like_plain_sft(toy, small_pools, tmp_path):
    model, tokenizer = toy

    def fresh():
        return apply_adapter(copy.deepcopy(model), r=4, seed=0)

    plain = train(fresh(), tokenizer, small_pools, NoDefense(), tmp_path)
    for defense in (L2SP(lam=0.0), EWC(lam=0.0)):
        got = train(fresh(), tokenizer, small_pools, defense, tmp_path)
        assert all(torch.equal(plain[n], got[n]) for n in plain), type(defense).__name__
    # the control: the term does act once the weights have left w0 (step 2 on)
    pulled = train(fresh(), tokenizer, small_pools, L2SP(lam=0.5), tmp_path)
    assert not all(torch.equal(plain[n], pulled[n]) for n in plain)


def test_ewc_reads_the_alignment_data(small_pools):
    assert EWC().extra_data(small_pools) == {"fisher": [*small_pools.align_harmful, *small_pools.align_benign]}


@pytest.mark.parametrize(
    ("target", "kwargs", "message"),
    [
        (L2SP, {"lam": -1}, "defense.lam=-1 must be >= 0"),
        (EWC, {"lam": -1e9}, "defense.lam=-1000000000 must be >= 0"),
        (EWC, {"fisher_reduction": "avg"}, "defense.fisher_reduction=avg is not one of: sum, mean"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(target, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        check_settings(target, **kwargs)
