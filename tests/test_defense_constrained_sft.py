"""Constrained SFT (Qi et al. 2024) against the exact token-wise objective, computed independently."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import check_settings, first_batch, fit_steps, perturb, stub_module, trainable_grads

from sbr_bench.data.formatting import IGNORE_INDEX
from sbr_bench.data.pools import Pair
from sbr_bench.defenses.constrained_sft import ConstrainedSFT
from sbr_bench.defenses.none import NoDefense
from sbr_bench.errors import ConfigError
from sbr_bench.models.adapters import apply_adapter
from sbr_bench.training.fit import make_loader
from sbr_bench.training.module import Optim, SafetyModule


@pytest.fixture
def models(toy):
    """(the aligned model, an independent copy of it, a fresh LoRA over the aligned model, tokenizer)."""
    model, tokenizer = toy
    aligned = copy.deepcopy(model)
    untouched = copy.deepcopy(model)
    return aligned, untouched, apply_adapter(aligned, kind="lora", r=4, alpha=8, seed=0), tokenizer


def user_batch(tokenizer, pools, n=4):
    return first_batch(tokenizer, pools.attack_harmful[:2] + pools.task_train[: n - 2])


def sft_loss(model, batch):
    """The module's own response-only CE (what plain SFT trains on)."""
    return SafetyModule(model, None, NoDefense(), Optim(lr=1e-3), stage="attack").task_loss(batch)


def logprobs_by_hand(model, batch):
    """Per answer, in order: log p(y_t | ...) of each answer token, from the full logits and explicit loops."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    answers = []
    for row in range(batch["labels"].shape[0]):
        picks = [
            (t, int(batch["labels"][row, t + 1]))
            for t in range(batch["labels"].shape[1] - 1)
            if batch["labels"][row, t + 1] != IGNORE_INDEX
        ]
        positions, tokens = (torch.tensor(column) for column in zip(*picks, strict=True))
        answers.append(list(log_probs[row, positions, tokens].unbind()))
    return answers


def paper_beta(t: int) -> float:
    """Qi et al.'s schedule for the t-th answer token, t from 1."""
    return 0.5 if t == 1 else 2.0 if t <= 5 else 0.1


def test_reference_is_the_aligned_model_with_the_adapter_disabled(models, pools):
    _, untouched, model, tokenizer = models
    batch = user_batch(tokenizer, pools)
    defense = ConstrainedSFT()
    defense.setup(stub_module(model))
    assert defense.reference_model is None  # a fresh LoRA: no copy
    perturb(model)  # fine-tuning moved the adapter
    keep = batch["labels"][:, 1:] != IGNORE_INDEX
    reference = defense.reference_logprobs(model, batch, keep)
    expected = torch.cat([torch.stack(a) for a in logprobs_by_hand(untouched, batch)])
    torch.testing.assert_close(reference.double(), expected, rtol=1e-5, atol=1e-5)
    assert not reference.requires_grad
    policy = torch.cat([torch.stack(a) for a in logprobs_by_hand(model, batch)])
    assert (policy - expected).abs().max() > 1e-3  # the adapter is back on afterwards
    assert model.training


def test_at_the_start_the_weights_are_one_and_the_loss_is_sft(models, pools):
    _, _, model, tokenizer = models
    batch = user_batch(tokenizer, pools)
    defense = ConstrainedSFT()
    defense.setup(stub_module(model))
    loss = defense.task_loss(stub_module(model), batch)
    plain = sft_loss(model, batch)
    torch.testing.assert_close(loss, plain, rtol=1e-6, atol=0)
    for a, b in zip(trainable_grads(loss, model), trainable_grads(plain, model), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_gradient_equals_the_exact_objective(models, pools):
    _, untouched, model, tokenizer = models
    batch = user_batch(tokenizer, pools)
    defense = ConstrainedSFT()
    defense.setup(stub_module(model))
    perturb(model, scale=0.2)
    loss = defense.task_loss(stub_module(model), batch)

    policy = logprobs_by_hand(model, batch)
    with torch.no_grad():
        reference = logprobs_by_hand(untouched, batch)
    terms, weights = [], []
    for answer_policy, answer_reference in zip(policy, reference, strict=True):
        for t, (lp, lr) in enumerate(zip(answer_policy, answer_reference, strict=True), start=1):
            beta = paper_beta(t)
            terms.append(-(2 / beta) * F.logsigmoid(beta * (lp - lr)))
            weights.append(2 * (1 - torch.sigmoid(beta * (lp - lr))).item())
    exact = torch.stack(terms).mean()
    assert min(weights) > 0.01  # away from the clamp
    assert max(abs(w - 1) for w in weights) > 0.05  # and away from the trivial w = 1
    for a, b in zip(trainable_grads(loss, model), trainable_grads(exact, model), strict=True):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-7)


def test_every_beta_zero_is_plain_sft_exactly(models, pools):
    _, _, model, tokenizer = models
    batch = user_batch(tokenizer, pools)
    defense = ConstrainedSFT(beta=0, beta_first_token=0, beta_prefix=0)
    defense.setup(stub_module(model))
    perturb(model, scale=0.2)  # delta != 0, which beta = 0 must ignore
    loss = defense.task_loss(stub_module(model), batch)
    plain = sft_loss(model, batch)
    assert torch.equal(loss, plain)
    for a, b in zip(trainable_grads(loss, model), trainable_grads(plain, model), strict=True):
        assert torch.equal(a, b)


def test_full_finetuning_keeps_a_frozen_copy(toy, pools):
    model, tokenizer = toy
    model = apply_adapter(copy.deepcopy(toy[0]), kind="full")
    untouched = copy.deepcopy(model)
    batch = user_batch(tokenizer, pools)
    defense = ConstrainedSFT()
    defense.setup(stub_module(model))
    assert defense.reference_model is not None
    assert not any(p.requires_grad for p in defense.reference_model.parameters())
    perturb(model, only="mlp")
    keep = batch["labels"][:, 1:] != IGNORE_INDEX
    expected = torch.cat([torch.stack(a) for a in logprobs_by_hand(untouched, batch)])
    torch.testing.assert_close(defense.reference_logprobs(model, batch, keep).double(), expected, rtol=1e-5, atol=1e-5)


def test_a_moved_adapter_is_copied_not_disabled(models):
    model = models[2]
    perturb(model)  # the adapter does not start at zero: disabling it would not give the start model
    defense = ConstrainedSFT()
    defense.setup(stub_module(model))
    assert defense.reference_model is not None


def test_beta_schedule_per_answer_token():
    keep = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    got = ConstrainedSFT().betas(keep).tolist()
    assert got == pytest.approx([paper_beta(t) for t in range(1, 8)] + [paper_beta(1), paper_beta(2)])
    assert ConstrainedSFT(prefix_length=0).betas(keep).tolist() == pytest.approx([0.1] * 9)  # the code's bias_length 0
    assert ConstrainedSFT(prefix_length=1).betas(keep).tolist() == pytest.approx([0.5] + [0.1] * 6 + [0.5, 0.1])


def test_weights_are_clamped(models, pools, monkeypatch):
    _, _, model, tokenizer = models
    batch = user_batch(tokenizer, pools)
    defense = ConstrainedSFT(min_weight=1e-3)
    defense.setup(stub_module(model))
    keep = batch["labels"][:, 1:] != IGNORE_INDEX
    far_below = defense.reference_logprobs(model, batch, keep) - 100  # delta = 100: sigmoid saturates
    monkeypatch.setattr(defense, "reference_logprobs", lambda *args: far_below)
    loss = defense.task_loss(stub_module(model), batch)
    torch.testing.assert_close(loss, 1e-3 * sft_loss(model, batch), rtol=1e-5, atol=0)


def test_one_step_through_lightning_logs_the_objective(models, pools):
    _, _, model, tokenizer = models
    pairs = [Pair(p.prompt, p.response) for p in pools.attack_harmful[:4]]
    loader = make_loader(tokenizer, pairs, max_length=128, batch_size=4, seed=0)
    module = SafetyModule(model, tokenizer, ConstrainedSFT(), Optim(lr=1e-2), stage="attack", pools=pools)
    trainer = fit_steps(module, loader, 2)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert {"attack/constrained_objective", "attack/constrained_weight", "attack/loss_task"} <= metrics.keys()
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["attack/constrained_weight"] != 1.0  # the second step sees a moved model


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": -0.1}, "defense.beta=-0.1"),
        ({"beta_first_token": -1}, "defense.beta_first_token=-1"),
        ({"beta_prefix": float("inf")}, "defense.beta_prefix=inf must be a finite number"),
        ({"min_weight": -1e-3}, "defense.min_weight=-0.001"),
        ({"prefix_length": -1}, "defense.prefix_length=-1 must be >= 0"),
        ({"prefix_length": 2.5}, "defense.prefix_length=2.5 must be an integer"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        check_settings(ConstrainedSFT, **kwargs)


@pytest.mark.parametrize("betas", [(0.1, 0.5, 2.0), (0.0, 0.0, 0.0)])
def test_logged_objective_is_the_exact_one_shifted_to_zero_at_the_start(models, pools, betas):
    _, untouched, model, tokenizer = models
    batch = user_batch(tokenizer, pools)
    beta, first, prefix = betas
    defense = ConstrainedSFT(beta=beta, beta_first_token=first, beta_prefix=prefix)
    module = stub_module(model, trainer=object())  # attached: the defense logs
    defense.setup(module)
    defense.task_loss(module, batch)
    logged = dict(module.logged)
    assert logged["attack/constrained_objective"] == 0.0 and logged["attack/constrained_weight"] == 1.0

    perturb(model, scale=0.2)
    defense.task_loss(module, batch)
    logged = dict(module.logged)  # the last value logged under each name
    with torch.no_grad():
        policy, reference = logprobs_by_hand(model, batch), logprobs_by_hand(untouched, batch)
    values = []
    for answer_policy, answer_reference in zip(policy, reference, strict=True):
        for t, (lp, lr) in enumerate(zip(answer_policy, answer_reference, strict=True), start=1):
            b = {1: first}.get(t, prefix if t <= 5 else beta)
            # paper objective minus its value at delta = 0; its beta -> 0 limit is -delta
            values.append(-(2 / b) * (F.logsigmoid(b * (lp - lr)) - math.log(0.5)) if b else lr - lp)
    assert logged["attack/constrained_objective"] == pytest.approx(torch.stack(values).mean().item(), rel=1e-4)
