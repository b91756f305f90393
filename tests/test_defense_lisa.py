"""Lisa: the bi-state schedule, the anchors, the proximal term and the alignment batches of a real fit."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from helpers import check_settings, stub_module

from sbr_bench.data.pools import Pair
from sbr_bench.defenses.lisa import Lisa, scaled_steps
from sbr_bench.errors import ConfigError
from sbr_bench.models.adapters import apply_adapter
from sbr_bench.training.fit import fit, stage_loaders
from sbr_bench.training.module import Optim, SafetyModule

ALIGN_BATCH = {"input_ids": torch.zeros(2, 3, dtype=torch.long)}
USER_BATCH = {"input_ids": torch.ones(2, 3, dtype=torch.long)}


def lisa_module(params, budget):
    """What Lisa reads from the LightningModule: ``budget`` steps, ``params`` training, the alignment stream."""
    return stub_module(
        trainer=SimpleNamespace(global_step=0),
        total_steps=lambda: budget,
        trainable_parameters=lambda: params,
        streams={"align": ALIGN_BATCH},
    )


def toy_params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(3, 4, generator=gen)), torch.nn.Parameter(torch.randn(5, generator=gen))]


@pytest.mark.parametrize(
    ("k1", "k2", "budget", "reference", "expected"),
    [
        (100, 900, 20000, 20000, (100, 900)),  # the paper's own budget: unscaled
        (100, 900, 50000, 20000, (100, 900)),  # longer runs (GSM8K, 50 epochs) keep 100 / 900
        (100, 900, 75, None, (100, 900)),  # scaling off
        (100, 900, 640, 20000, (3, 27)),  # 100 * 640 / 20000 = 3.2
        (100, 900, 75, 20000, (1, 9)),  # 0.375 -> the floor of 1 step
        (100, 900, 1100, 20000, (6, 54)),  # 5.5 rounds up
        (2, 5, 500, 1000, (1, 3)),  # a non-integer ratio: K2 = 1 * 5 / 2 = 2.5 -> 3
    ],
)
def test_step_scaling_rule(k1, k2, budget, reference, expected):
    assert scaled_steps(k1, k2, budget, reference) == expected


def run_schedule(lisa, module, steps, grad_accum):
    """Call select_batch as the module does (grad_accum micro-batches per step); which batch each got."""
    chosen = []
    for step in range(steps):
        module.trainer.global_step = step
        picks = [lisa.select_batch(module, USER_BATCH) for _ in range(grad_accum)]
        chosen.append(["align" if b is ALIGN_BATCH else "user" if b is USER_BATCH else "?" for b in picks])
    return chosen


@pytest.mark.parametrize("grad_accum", [1, 3])
def test_states_switch_at_exactly_the_scaled_steps(grad_accum):
    lisa = Lisa(align_steps=100, finetune_steps=900, reference_steps=2000)
    module = lisa_module(toy_params(), budget=64)
    lisa.setup(module)
    assert (lisa.k1, lisa.k2) == (3, 27)  # 100 * 64 / 2000 = 3.2 -> 3; 3 * 9 = 27
    chosen = run_schedule(lisa, module, steps=64, grad_accum=grad_accum)
    # by hand: 3 alignment steps first, then 27 user steps, repeated
    align_steps = {0, 1, 2, 30, 31, 32, 60, 61, 62}
    for step, windows in enumerate(chosen):
        assert windows == ["align" if step in align_steps else "user"] * grad_accum, step
    states = [value for name, value in module.logged if name == "attack/lisa_state"]
    assert states == [float(step in align_steps) for step in range(64) for _ in range(grad_accum)]


def test_anchor_is_the_weights_at_each_switch():
    params = toy_params()
    lisa = Lisa(align_steps=2, finetune_steps=3, reference_steps=None)
    module = lisa_module(params, budget=20)
    lisa.setup(module)
    initial = [p.detach().clone() for p in params]
    anchors_by_hand = {}
    current = initial
    for step in range(20):
        module.trainer.global_step = step
        before = [p.detach().clone() for p in params]
        if step in (2, 5, 7, 10, 12, 15, 17):  # the switches of a 2 / 3 cycle
            current = before
        for _ in range(2):  # an accumulation window: the weights do not change inside it
            lisa.select_batch(module, USER_BATCH)
        anchors_by_hand[step] = current
        for a, b in zip(lisa.anchor, current, strict=True):
            assert torch.equal(a, b), step
        assert all(not a.requires_grad for a in lisa.anchor)
        with torch.no_grad():  # an optimizer step
            for p in params:
                p.add_(0.1 * (step + 1))
    assert all(torch.equal(a, b) for a, b in zip(anchors_by_hand[1], initial, strict=True))


def test_proximal_term_starts_after_the_start_fraction_and_matches_by_hand():
    params = toy_params()
    lisa = Lisa(rho=1.0, align_steps=1, finetune_steps=4, reference_steps=None, proximal_start=0.1)
    module = lisa_module(params, budget=50)
    lisa.setup(module)
    for step in range(6):  # steps 0..5: 5 <= 0.1 * 50, the code's "steps > 0.1 * total" is false
        module.trainer.global_step = step
        lisa.select_batch(module, USER_BATCH)
        assert lisa.loss_terms(module, USER_BATCH) == {}, step
        with torch.no_grad():
            params[0].add_(0.01)
    module.trainer.global_step = 6  # a switch (alignment at 5 -> user): the anchor becomes the current weights
    lisa.select_batch(module, USER_BATCH)
    anchor = [p.detach().clone() for p in params]
    with torch.no_grad():
        params[0][1, 2] += 0.3
        params[1][4] -= 0.2
    term = lisa.loss_terms(module, USER_BATCH)["proximal"]
    # rho / 2 * ||w - anchor||^2 = 0.5 * (0.3^2 + 0.2^2)
    torch.testing.assert_close(term, torch.tensor(0.5 * (0.3**2 + 0.2**2)), rtol=1e-5, atol=1e-7)
    flat = torch.cat([(p - a).flatten() for p, a in zip(params, anchor, strict=True)])
    torch.testing.assert_close(term, 0.5 * flat.dot(flat))
    term.backward()  # gradient rho * (w - anchor) on the weights, none on the anchor
    torch.testing.assert_close(params[0].grad, params[0].detach() - anchor[0])
    assert all(a.grad is None for a in lisa.anchor)

    bso = Lisa(rho=0.0, align_steps=1, finetune_steps=4, reference_steps=None)
    bso.setup(module)
    assert bso.loss_terms(module, USER_BATCH) == {}


def test_a_real_fit_trains_on_alignment_batches_in_the_alignment_state(toy, pools, tmp_path):
    model, tokenizer = toy
    model = apply_adapter(copy.deepcopy(model), r=4, seed=0)
    user = [Pair(p.prompt, p.response) for p in pools.task_train[:16]]
    lisa = Lisa(align_steps=1, finetune_steps=2, reference_steps=None)
    loader, streams = stage_loaders(lisa, pools, user, tokenizer, max_length=128, batch_size=4, seed=0)
    assert set(streams) == {"align"} and len(loader.dataset) == len(user)

    def rows(examples):
        return {tuple(e["input_ids"]) for e in examples}

    user_rows, align_rows = rows(loader.dataset), rows(streams["align"].dataset)
    seen = []  # (optimizer step, which data each row of the trained batch came from)

    class Recording(SafetyModule):
        def task_loss(self, batch):
            lengths = batch["attention_mask"].sum(1).tolist()
            ids = [tuple(r[:n]) for r, n in zip(batch["input_ids"].tolist(), lengths, strict=True)]
            source = {"user" if r in user_rows else "align" if r in align_rows else "?" for r in ids}
            seen.append((self.trainer.global_step, source, tuple(ids)))
            return super().task_loss(batch)

    module = Recording(model, tokenizer, lisa, Optim(lr=1e-3), stage="attack", pools=pools, streams=streams)
    trainer_cfg = {"accelerator": "cpu", "enable_progress_bar": False}
    fit(module, loader, trainer_cfg, logger=None, output_dir=str(tmp_path), max_steps=6, grad_accum=2)

    assert [step for step, _, _ in seen] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    expected = {0: "align", 1: "user", 2: "user", 3: "align", 4: "user", 5: "user"}
    for step, source, _ in seen:
        assert source == {expected[step]}, (step, source)
    align_batches = [ids for step, _, ids in seen if expected[step] == "align"]
    assert len(set(align_batches)) == len(align_batches)  # every alignment micro-batch is a fresh draw
    assert module.trainer.callback_metrics["attack/lisa_state"].item() == 0.0  # step 5: the user's state


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rho": -1}, "defense.rho=-1"),
        ({"align_steps": 0}, "defense.align_steps=0"),
        ({"finetune_steps": 2.5}, "defense.finetune_steps=2.5 must be an integer"),
        ({"reference_steps": 0}, "defense.reference_steps=0"),
        ({"proximal_start": 1.5}, r"defense.proximal_start=1.5 is outside \[0, 1\]"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        check_settings(Lisa, **kwargs)


def test_alignment_stream_is_refusals_and_helpful_answers(pools):
    assert Lisa().extra_data(pools) == {"align": [*pools.align_harmful, *pools.align_benign]}
