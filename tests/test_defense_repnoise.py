"""RepNoise against independent computations (explicit loops, HF's own hidden states) on the toy model."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import bare_module, check_settings, first_batch, fit_steps, stub_module, trainable, trainable_grads

from sbr_bench.data.formatting import IGNORE_INDEX, encode_pair
from sbr_bench.data.pools import Pair
from sbr_bench.defenses import repnoise
from sbr_bench.defenses.none import NoDefense
from sbr_bench.defenses.repnoise import LinearCrossEntropy, RepNoise, mmd
from sbr_bench.errors import ConfigError
from sbr_bench.models.adapters import apply_adapter
from sbr_bench.training.fit import stage_loaders
from sbr_bench.training.module import Optim, SafetyModule


def mmd_by_hand(x: torch.Tensor, y: torch.Tensor, kernel_num: int = 5, kernel_mul: float = 2.0) -> torch.Tensor:
    """The multi-kernel formula with explicit double loops, in float64."""
    rows = [r.double() for r in [*x, *y]]
    n, b = len(rows), len(x)
    dist = [[((rows[i] - rows[j]) ** 2).sum() for j in range(n)] for i in range(n)]
    bandwidth = sum(dist[i][j] for i in range(n) for j in range(n) if i != j).detach() / (n * n - n)
    widths = [bandwidth * kernel_mul ** (q - kernel_num // 2) for q in range(kernel_num)]

    def k(i, j):
        return sum(torch.exp(-dist[i][j] / w) for w in widths)

    total = sum(k(i, j) + k(b + i, b + j) - k(i, b + j) - k(b + i, j) for i in range(b) for j in range(b))
    return total / (b * b)


def masked_ce_by_hand(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over every (row, t) whose next token is an answer token of -log softmax(logits[row, t])[token]."""
    picks = [
        (row, t, int(labels[row, t + 1]))
        for row in range(labels.shape[0])
        for t in range(labels.shape[1] - 1)
        if labels[row, t + 1] != IGNORE_INDEX
    ]
    rows, positions, tokens = (torch.tensor(column) for column in zip(*picks, strict=True))
    log_probs = torch.log_softmax(logits[rows, positions].double(), dim=-1)
    return -log_probs[torch.arange(len(picks)), tokens].sum() / len(picks)


@pytest.fixture
def toy_model(toy):
    """The toy model with a non-trivial final norm (so normalising twice differs from once)."""
    model, tokenizer = toy
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.model.norm.weight.copy_(
            1 + 0.5 * torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
        )
    return model, tokenizer


def harmful_batch(tokenizer, pools, n=4):
    return first_batch(tokenizer, pools.align_compliant[:n])


def test_mmd_matches_the_double_loop_formula():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, generator=gen).mul(2).requires_grad_(True)
    y = torch.randn(3, 40, generator=gen)
    got = mmd(x, y)
    expected = mmd_by_hand(x, y)
    assert expected.item() > 1e-3
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)
    (g_got,) = torch.autograd.grad(got, x)
    (g_expected,) = torch.autograd.grad(expected, x)
    torch.testing.assert_close(g_got.double(), g_expected.double(), rtol=1e-4, atol=1e-7)
    # Other kernel settings, and unequal scales.
    z = torch.randn(2, 7, generator=gen) + 3
    w = torch.randn(2, 7, generator=gen)
    torch.testing.assert_close(mmd(z, w, 3, 1.5).double(), mmd_by_hand(z, w, 3, 1.5), rtol=1e-5, atol=1e-7)
    assert mmd(z, z).abs().item() < 1e-6


@pytest.mark.parametrize("norm_last_twice", [True, False])
def test_ascent_term_matches_the_logit_lens_computed_separately(toy_model, pools, norm_last_twice):
    model, tokenizer = toy_model
    batch = harmful_batch(tokenizer, pools)
    rep = RepNoise(alpha=0.7, beta=0.0, norm_last_twice=norm_last_twice)
    module = stub_module(model, tokenizer, pools, streams={"harmful": batch})
    rep.setup(module)
    terms = rep.harmful_terms(module)
    assert set(terms) == {"ascent"}

    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    states = out.hidden_states  # embedding output, every layer's output (the last one after the final norm)
    assert len(states) == model.config.num_hidden_layers + 1
    norm = model.model.norm
    lens = [masked_ce_by_hand(model.lm_head(norm(h)), batch["labels"]) for h in states[:-1]]
    last = norm(states[-1]) if norm_last_twice else states[-1]
    lens.append(masked_ce_by_hand(model.lm_head(last), batch["labels"]))
    ascent = (masked_ce_by_hand(out.logits, batch["labels"]) + sum(lens)) / len(states)
    expected = -0.7 * torch.log(ascent + 1)
    torch.testing.assert_close(terms["ascent"].double(), expected, rtol=1e-5, atol=1e-6)
    for g, e in zip(
        trainable_grads(terms["ascent"], model, allow_unused=True),
        trainable_grads(expected, model, allow_unused=True),
        strict=True,
    ):
        torch.testing.assert_close(g.double(), e.double(), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 64])
@pytest.mark.parametrize("weight_trains", [True, False])
def test_chunked_cross_entropy_equals_the_whole_logits_one(chunk, weight_trains):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 16, generator=gen, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen).requires_grad_(weight_trains)
    targets = torch.randint(0, 50, (10,), generator=gen)
    got = LinearCrossEntropy.apply(x, weight, targets, chunk)
    logits = torch.nn.functional.linear(x, weight).float()
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)
    inputs = (x, weight) if weight_trains else (x,)
    for g, e in zip(torch.autograd.grad(2.5 * got, inputs), torch.autograd.grad(2.5 * expected, inputs), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)  # fp32, sums in another order


def test_the_ascent_term_does_not_depend_on_the_lens_chunk(toy_model, pools, monkeypatch):
    model, tokenizer = toy_model
    batch = harmful_batch(tokenizer, pools)
    module = stub_module(model, tokenizer, pools, streams={"harmful": batch})
    rep = RepNoise(alpha=1.0, beta=0.0)
    rep.setup(module)
    calls = []
    fused = LinearCrossEntropy.apply
    monkeypatch.setattr(LinearCrossEntropy, "apply", lambda *a: calls.append(a[0].shape) or fused(*a))
    whole = rep.harmful_terms(module)["ascent"]
    rows = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert calls == [(rows * (model.config.num_hidden_layers + 2), model.config.hidden_size)]  # one call, all lenses
    monkeypatch.setattr(repnoise, "LENS_CHUNK_ROWS", 7)  # many chunks, the last one partial
    chunked = rep.harmful_terms(module)["ascent"]
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
    for g, e in zip(
        trainable_grads(chunked, model, allow_unused=True),
        trainable_grads(whole, model, allow_unused=True),
        strict=True,
    ):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)


def test_double_norm_changes_the_last_lens(toy_model, pools):
    model, tokenizer = toy_model
    batch = harmful_batch(tokenizer, pools)
    module = stub_module(model, tokenizer, pools, streams={"harmful": batch})
    twice = RepNoise(alpha=1, beta=0, norm_last_twice=True).harmful_terms(module)["ascent"]
    once = RepNoise(alpha=1, beta=0, norm_last_twice=False).harmful_terms(module)["ascent"]
    assert abs(twice.item() - once.item()) > 1e-4


def test_noise_term_matches_mmd_of_hooked_mlp_outputs(toy_model, pools):
    model, tokenizer = toy_model
    batch = harmful_batch(tokenizer, pools, n=3)
    rep = RepNoise(alpha=0.0, beta=0.25)
    module = stub_module(model, tokenizer, pools, streams={"harmful": batch})
    torch.manual_seed(123)
    terms = rep.harmful_terms(module)
    assert set(terms) == {"noise"}

    outputs = []
    hooks = [layer.mlp.register_forward_hook(lambda m, i, o: outputs.append(o)) for layer in model.model.layers]
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for h in hooks:
        h.remove()
    answer = (batch["labels"] != IGNORE_INDEX).unsqueeze(-1).float()
    torch.manual_seed(123)  # the same draws: one N(0, I) tensor per layer, first layer first
    per_layer = []
    for a in outputs:
        noise = torch.randn(a.shape) * answer
        per_layer.append(mmd_by_hand((a * answer).flatten(1), noise.flatten(1)))
    expected = 0.25 * sum(per_layer) / len(per_layer)
    assert expected.item() > 0
    torch.testing.assert_close(terms["noise"].double(), expected, rtol=1e-4, atol=1e-8)


def test_paired_diff_mask_is_the_answer_tokens_that_differ_from_the_refusal(toy, pools):
    model, tokenizer = toy
    n = 6
    batch = harmful_batch(tokenizer, pools, n=n)
    rep = RepNoise(mask="paired_diff")
    rep.setup(stub_module(model, tokenizer, pools, streams={"harmful": batch}))
    got = rep.token_mask(batch)
    by_prompt = {p.prompt: p for p in pools.align_harmful}
    rows = {tuple(r): i for i, r in enumerate(batch["input_ids"].tolist())}
    for pair in pools.align_compliant[:n]:
        harmful = encode_pair(tokenizer, pair.prompt, pair.response, 128)
        refusal = encode_pair(tokenizer, pair.prompt, by_prompt[pair.prompt].response, 10_000)["input_ids"]
        width = batch["input_ids"].shape[1]
        ids = harmful["input_ids"] + [tokenizer.pad_token_id] * (width - len(harmful["input_ids"]))
        row = rows[tuple(ids)]
        for t in range(width):
            answer = t < len(harmful["labels"]) and harmful["labels"][t] != IGNORE_INDEX
            differs = t >= len(refusal) or refusal[t] != ids[t]
            assert bool(got[row, t]) == (answer and differs), (row, t)
    response = batch["labels"] != IGNORE_INDEX
    assert (got <= response).all() and got.sum() < response.sum()  # some answer tokens equal the refusal's


def train_one_step(model, tokenizer, pools, defense, batch_size=4):
    """One optimizer step of the alignment stage through the real Lightning module and its streams."""
    pairs = [Pair(p.prompt, p.response) for p in pools.align_harmful[:batch_size] + pools.align_benign[:batch_size]]
    loader, streams = stage_loaders(defense, pools, pairs, tokenizer, 128, batch_size, seed=0)
    module = SafetyModule(model, tokenizer, defense, Optim(lr=1e-2), stage="align", pools=pools, streams=streams)
    trainer = fit_steps(module, loader, 1)
    weights = {n: p.detach().clone() for n, p in trainable(model).items()}
    return weights, {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_zero_weights_are_plain_sft_exactly(toy, pools):
    model, tokenizer = toy
    start = apply_adapter(copy.deepcopy(model), r=4, seed=0)
    plain, plain_logs = train_one_step(copy.deepcopy(start), tokenizer, pools, NoDefense())
    zero, zero_logs = train_one_step(copy.deepcopy(start), tokenizer, pools, RepNoise(alpha=0, beta=0))
    assert plain_logs["align/loss_task"] == zero_logs["align/loss_task"]
    assert plain.keys() == zero.keys()
    for name in plain:
        assert torch.equal(plain[name], zero[name]), name
    # With weights on, the terms are logged, and they move the weights differently.
    defended, logs = train_one_step(copy.deepcopy(start), tokenizer, pools, RepNoise(alpha=1, beta=0.5))
    assert {"align/loss_noise", "align/loss_ascent"} <= logs.keys()
    assert all(math.isfinite(v) for v in logs.values())
    assert any(not torch.equal(plain[n], defended[n]) for n in plain)


def test_a_step_has_the_gradient_of_one_backward_of_the_whole_loss(toy_model, pools):
    """The step backwards the harmless and the harmful pass one by one; here their sum is differentiated once."""
    model, tokenizer = toy_model
    model = apply_adapter(copy.deepcopy(model), r=4, seed=0)
    batch = first_batch(tokenizer, pools.align_harmful[:3] + pools.align_benign[:3])
    harmful = harmful_batch(tokenizer, pools, n=3)
    rep = RepNoise(alpha=0.7, beta=0.5)
    module = bare_module(model, tokenizer, rep, grad_accum=2, harmful=harmful)
    module.pools = pools
    rep.setup(module)

    torch.manual_seed(7)
    losses = rep.training_step(module, batch)
    stepped = [p.grad.clone() for p in trainable(model).values()]
    assert set(losses) == {"task", "noise", "ascent"}

    torch.manual_seed(7)  # the same noise draws
    whole = module.task_loss(batch) + sum(rep.harmful_terms(module).values())
    expected = trainable_grads(whole / 2, model)  # divided by the micro-batches per step
    assert whole.item() == pytest.approx(sum(v.item() for v in losses.values()), rel=1e-6)
    for got, want in zip(stepped, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in expected)


def test_harmful_stream_is_the_compliant_pool(pools):
    assert RepNoise().extra_data(pools) == {"harmful": pools.align_compliant}
    assert RepNoise(num_harmful=5).extra_data(pools)["harmful"] == pools.align_compliant[:5]
    assert [p.prompt for p in pools.align_compliant] == [p.prompt for p in pools.align_harmful]


def test_hft_option_holds_the_booster_rerun_values(make_cfg):
    from hydra.utils import instantiate

    paper = instantiate(make_cfg(["model=toy", "defense=repnoise"]).defense)
    hft = instantiate(make_cfg(["model=toy", "defense=repnoise_hft"]).defense)
    assert (paper.alpha, paper.beta) == (1.0, 0.001)
    assert (hft.alpha, hft.beta) == (0.1, 0.001)
    assert isinstance(hft, RepNoise) and hft.stage == "align"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": -1}, "defense.alpha=-1"),
        ({"beta": -0.1}, "defense.beta=-0.1"),
        ({"beta": float("nan")}, "defense.beta=nan must be a finite number"),
        ({"mask": "diff"}, "defense.mask=diff is not one of: response, paired_diff"),
        ({"num_harmful": 0}, "defense.num_harmful=0"),
        ({"kernel_num": 0}, "defense.kernel_num=0"),
        ({"kernel_mul": 0}, "defense.kernel_mul=0"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        check_settings(RepNoise, **kwargs)


def test_more_harmful_pairs_than_the_pool_fails_before_training(pools):
    n = len(pools.align_compliant)
    with pytest.raises(ConfigError, match=rf"num_harmful={n + 1} but align_compliant holds {n} pairs"):
        RepNoise(num_harmful=n + 1).check(pools)
