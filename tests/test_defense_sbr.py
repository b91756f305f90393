"""SBR against an independent computation on the toy model."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from helpers import PerturbAtTrainStart, check_settings, fit_steps, perturb, stub_module, trainable

from sbr_bench.data.pools import Pair
from sbr_bench.defenses.none import NoDefense
from sbr_bench.defenses.sbr import SBR
from sbr_bench.errors import ConfigError
from sbr_bench.models.adapters import apply_adapter
from sbr_bench.training.fit import make_loader
from sbr_bench.training.module import Optim, SafetyModule


def reference_by_hand(model, tokenizer, prompts):
    """Official-code convention, computed independently: hidden_states[-1] at attention_mask.sum()-1."""
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    out = model(**batch, output_hidden_states=True)
    last = batch["attention_mask"].sum(1) - 1
    return out.hidden_states[-1][torch.arange(len(prompts)), last], out.logits[torch.arange(len(prompts)), last]


def test_term_is_zero_at_the_start_of_the_attack(fresh_lora_toy, pools):
    model, tokenizer = fresh_lora_toy
    sbr = SBR(lam=50, num_anchors=4)
    module = stub_module(model, tokenizer, pools)
    sbr.setup(module)
    assert sbr.loss_terms(module, batch={})["sbr"].item() == 0.0


def test_term_matches_independent_computation(fresh_lora_toy, pools):
    model, tokenizer = fresh_lora_toy
    sbr = SBR(lam=50, num_anchors=3, anchor_seed=7)
    module = stub_module(model, tokenizer, pools)
    with torch.no_grad():
        ref, _ = reference_by_hand(model, tokenizer, sbr.choose_anchors(pools.anchors))
    sbr.setup(module)
    torch.testing.assert_close(sbr.reference, ref, rtol=1e-5, atol=1e-6)

    perturb(model)
    current, _ = reference_by_hand(model, tokenizer, sbr.anchor_prompts)
    expected = 50 * ((current - ref) ** 2).sum() / current.numel()  # element-wise mean, as F.mse_loss
    got = sbr.loss_terms(module, batch={})["sbr"]
    assert expected.item() > 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-8)

    paper = SBR(lam=50, num_anchors=3, anchor_seed=7, reduction="paper_sum")
    paper.anchor_prompts = sbr.anchor_prompts
    paper.anchor_ids, paper.anchor_mask, paper.reference = sbr.anchor_ids, sbr.anchor_mask, sbr.reference
    per_anchor = ((current - ref) ** 2).sum(dim=1).mean()  # (1/K) sum_k ||dh_k||^2
    torch.testing.assert_close(paper.loss_terms(module, batch={})["sbr"], 50 * per_anchor, rtol=1e-5, atol=1e-8)


def test_hidden_state_used_is_the_lm_head_input(fresh_lora_toy, pools):
    model, tokenizer = fresh_lora_toy
    perturb(model)
    sbr = SBR(num_anchors=5)
    sbr.setup(stub_module(model, tokenizer, pools))
    with torch.no_grad():
        states = sbr.anchor_states(model)
        _, logits = reference_by_hand(model, tokenizer, sbr.anchor_prompts)
        head = model.get_output_embeddings()
        torch.testing.assert_close(head(states), logits, rtol=1e-5, atol=1e-5)


def test_gradient_reaches_only_trainable_parameters(fresh_lora_toy, pools):
    model, tokenizer = fresh_lora_toy
    sbr = SBR(lam=50, num_anchors=2)
    module = stub_module(model, tokenizer, pools)
    sbr.setup(module)
    perturb(model)
    sbr.loss_terms(module, batch={})["sbr"].backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and with_grad <= set(trainable(model))
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in with_grad)
    assert not sbr.reference.requires_grad and sbr.reference.grad is None


def train_one_step(model, tokenizer, pools, defense, grad_accum=1, batches=1, batch_size=4, callbacks=None):
    """One optimizer step through the real Lightning module; returns the trainable weights after it."""
    pairs = [Pair(p.prompt, p.response) for p in pools.attack_harmful[: batch_size * batches]]
    loader = make_loader(tokenizer, pairs, max_length=128, batch_size=batch_size, seed=0)
    module = SafetyModule(model, tokenizer, defense, Optim(lr=1e-2), stage="attack", pools=pools)
    fit_steps(module, loader, 1, grad_accum=grad_accum, callbacks=callbacks)
    return {n: p.detach().clone() for n, p in trainable(model).items()}


def test_lambda_zero_is_plain_sft_exactly(toy, pools):
    model, tokenizer = toy
    plain = train_one_step(apply_adapter(copy.deepcopy(model), r=4, seed=0), tokenizer, pools, NoDefense())
    zero = train_one_step(apply_adapter(copy.deepcopy(model), r=4, seed=0), tokenizer, pools, SBR(lam=0))
    assert plain.keys() == zero.keys()
    for name in plain:
        assert torch.equal(plain[name], zero[name]), name


def test_anchor_pass_once_per_step_equals_every_micro_batch(toy, pools):
    model, tokenizer = toy
    start = apply_adapter(copy.deepcopy(model), r=4, seed=0)
    moved = [PerturbAtTrainStart()]  # B moves after SBR's setup: a non-zero anchor gradient from the first step on
    results = {}
    for anchor_pass in ("optimizer_step", "micro_batch"):
        sbr = SBR(lam=50, num_anchors=2, anchor_pass=anchor_pass)
        results[anchor_pass] = train_one_step(
            copy.deepcopy(start), tokenizer, pools, sbr, grad_accum=2, batches=2, callbacks=moved
        )
    for name, value in results["optimizer_step"].items():
        torch.testing.assert_close(value, results["micro_batch"][name], rtol=1e-5, atol=1e-7)


def test_ga_scaling_sum_multiplies_the_weight_by_accumulation(fresh_lora_toy, pools):
    model, tokenizer = fresh_lora_toy
    mean = SBR(lam=5, num_anchors=1, anchor_pass="micro_batch", ga_scaling="mean")
    total = SBR(lam=5, num_anchors=1, anchor_pass="micro_batch", ga_scaling="sum")
    module = stub_module(model, tokenizer, pools, position=(1, 4, 4))
    mean.setup(module)
    total.setup(module)
    perturb(model)
    torch.testing.assert_close(total.loss_terms(module, {})["sbr"], 4 * mean.loss_terms(module, {})["sbr"])


def test_anchors_are_a_seeded_draw_from_the_anchor_pool(pools):
    a = SBR(num_anchors=4, anchor_seed=3).choose_anchors(pools.anchors)
    assert a == SBR(num_anchors=4, anchor_seed=3).choose_anchors(pools.anchors)
    assert a != SBR(num_anchors=4, anchor_seed=4).choose_anchors(pools.anchors)
    assert set(a) <= set(pools.anchors)
    assert not set(a) & (set(pools.eval_harmful) | {p.prompt for p in pools.attack_harmful})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lam": -1}, "defense.lam=-1 must be >= 0"),
        ({"reduction": "sum"}, "defense.reduction=sum is not one of: elementwise_mean, paper_sum"),
        ({"anchor_pass": "epoch"}, "defense.anchor_pass=epoch is not one of: optimizer_step, micro_batch"),
        ({"num_anchors": 0}, "defense.num_anchors=0 must be > 0"),
        ({"prompts": []}, "defense.prompts=[] must not be empty"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_settings(SBR, **kwargs)


def test_more_anchors_than_the_pool_fails_before_training(pools):
    with pytest.raises(ConfigError, match=r"num_anchors=999 but the anchor pool holds 20 prompts"):
        SBR(num_anchors=999).check(pools)


def test_shared_prefix_pass_equals_full_passes(fresh_lora_toy, pools):
    """The anchors' common start runs once; states and gradients equal K full passes."""
    model, tokenizer = fresh_lora_toy
    perturb(model)
    shared, full = SBR(num_anchors=6, share_prefix=True), SBR(num_anchors=6, share_prefix=False)
    for sbr in (shared, full):
        sbr.setup(stub_module(model, tokenizer, pools))
    assert shared.prefix_len > 0 and full.prefix_len == 0
    prefix = shared.anchor_ids[:, : shared.prefix_len]
    assert (prefix == prefix[:1]).all() and shared.prefix_len < int(shared.anchor_mask.sum(1).min())
    params = list(trainable(model).values())
    # A random linear read-out (a sum of squares would be flat: the untrained final norm fixes |h|).
    weights = torch.randn(6, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    states = {}
    grads = {}
    for name, sbr in (("shared", shared), ("full", full)):
        states[name] = sbr.anchor_states(model)
        grads[name] = torch.autograd.grad((states[name] * weights).sum(), params)
    torch.testing.assert_close(states["shared"], states["full"], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads["shared"], grads["full"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert SBR(num_anchors=1).prefix_len == 0
