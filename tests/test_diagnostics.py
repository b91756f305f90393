"""Attack diagnostics against independent computations on the toy model (no Trainer: fast)."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from helpers import fresh_lora, perturb

from sbr_bench.defenses.sbr import SBR
from sbr_bench.errors import ConfigError
from sbr_bench.evaluation.diagnostics import Diagnostics, isolated, refusal_start_tokens

NUM_PROMPTS = 6


@pytest.fixture
def lora_and_base(toy):
    """The toy model with a fresh LoRA adapter (B = 0: the wrapped model equals the base) and its base copy."""
    model, tokenizer = toy
    base = copy.deepcopy(model)
    return fresh_lora(model), base, tokenizer


def hidden_one_by_one(model, tokenizer, prompts):
    """Final hidden states of each prompt alone (no padding) and the full logits at its last token."""
    hidden, last_logits = [], []
    with torch.no_grad():
        for prompt in prompts:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            out = model(input_ids=ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-1][0])
            last_logits.append(out.logits[0, -1])
    return hidden, last_logits


def test_refusal_start_set_drops_tokens_that_also_start_a_compliant_answer(toy):
    _, tokenizer = toy
    refusal, ambiguous = refusal_start_tokens(
        tokenizer,
        refusals=["I can't help with that.", "Sorry, no."],
        compliant=["I can do that.", "Sure. Here is how."],
        phrases=("i'm sorry",),
    )
    ids = tokenizer.convert_tokens_to_ids
    assert refusal == {ids("i'm"), ids("sorry")}
    assert ambiguous == {ids("i")}


def test_refusal_start_set_on_the_bundled_data(toy, pools):
    """ "I" starts every refusal and no compliant answer of the bundled data, so it counts; "sure" never."""
    _, tokenizer = toy
    diag = Diagnostics(num_prompts=NUM_PROMPTS)
    model = toy[0]
    diag.start(model, tokenizer, pools)
    names = set(tokenizer.convert_ids_to_tokens(diag.refusal_ids))
    assert {"i", "i'm", "my"} <= names
    assert not names & {"sure", "certainly", "of", "okay", "here", "happy", "absolutely"}


def test_everything_is_zero_at_the_start(lora_and_base, pools):
    model, _, tokenizer = lora_and_base
    diag = Diagnostics(num_prompts=NUM_PROMPTS)
    diag.start(model, tokenizer, pools)
    values = diag.measure(model)
    for key in ("anchor_distance", "param_distance", "lora_delta_norm", "harmful_drift"):
        assert values[key] == 0.0, key
    assert 0.0 < values["refusal_start_prob"] < 1.0


def test_each_diagnostic_matches_an_independent_computation(lora_and_base, pools):
    model, base, tokenizer = lora_and_base
    prompts = pools.eval_harmful[:NUM_PROMPTS]
    anchor = SBR().choose_anchors(pools.anchors)  # the default anchors (K = 1, seed 0)
    hidden_before, _ = hidden_one_by_one(model, tokenizer, prompts)
    anchor_before, _ = hidden_one_by_one(model, tokenizer, anchor)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    diag = Diagnostics(num_prompts=NUM_PROMPTS)
    diag.start(model, tokenizer, pools)

    perturb(model, seed=3, only="")  # A and B of every LoRA layer, as attack steps would
    hand_picked = [tokenizer.convert_tokens_to_ids(t) for t in ("i", "i'm", "sure")]
    diag.refusal_ids = hand_picked
    got = diag.measure(model)
    hidden_after, logits_after = hidden_one_by_one(model, tokenizer, prompts)
    anchor_after, _ = hidden_one_by_one(model, tokenizer, anchor)

    # anchor distance: element-wise mean of the squared change at the anchor's last token
    expected_anchor = (anchor_after[0][-1] - anchor_before[0][-1]).pow(2).mean()
    # parameter distance: L2 norm of the change of the trainable parameters
    expected_params = sum((p.detach() - start[n]).pow(2).sum() for n, p in model.named_parameters() if n in start)
    # merged-weight change: the merged model's weights minus the base model's (B was 0 at the start)
    merged = copy.deepcopy(model).merge_and_unload()
    base_weights = dict(base.named_parameters())
    expected_merged = sum((w.detach() - base_weights[n].detach()).pow(2).sum() for n, w in merged.named_parameters())
    # Vaccine's drift: per prompt the L2 norm of the change of its final hidden states, averaged
    expected_drift = torch.stack([(a - b).norm() for a, b in zip(hidden_after, hidden_before, strict=True)]).mean()
    # refusal-start probability: full softmax at the last prompt token, summed over the hand-picked set
    expected_prob = torch.stack([logits.softmax(-1)[hand_picked].sum() for logits in logits_after]).mean()

    assert expected_anchor > 0 and expected_drift > 0 and expected_merged > 0
    assert got["anchor_distance"] == pytest.approx(expected_anchor.item(), rel=1e-4)
    assert got["param_distance"] == pytest.approx(expected_params.sqrt().item(), rel=1e-5)
    assert got["lora_delta_norm"] == pytest.approx(expected_merged.sqrt().item(), rel=1e-4)
    assert got["harmful_drift"] == pytest.approx(expected_drift.item(), rel=1e-4)
    assert got["refusal_start_prob"] == pytest.approx(expected_prob.item(), rel=1e-5)


def test_measuring_restores_train_flags_and_every_random_generator(lora_and_base, pools):
    model, _, tokenizer = lora_and_base
    model.train()
    frozen = next(m for name, m in model.named_modules() if name.endswith("embed_tokens"))
    frozen.eval()  # a sub-module deliberately in eval mode stays so
    diag = Diagnostics(num_prompts=NUM_PROMPTS)
    diag.start(model, tokenizer, pools)
    modes = {name: m.training for name, m in model.named_modules()}

    def reseed():
        torch.manual_seed(5)
        random.seed(5)
        np.random.seed(5)

    reseed()
    expected = (torch.rand(3), random.random(), np.random.rand())
    reseed()
    diag.measure(model)
    with isolated(model):
        torch.rand(10), random.random(), np.random.rand()  # draws inside are undone on the way out
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert not frozen.training and model.training


def test_too_many_prompts_is_one_clear_line(pools):
    with pytest.raises(ConfigError, match=r"num_prompts=500 but the harmful evaluation pool holds 100"):
        Diagnostics(num_prompts=500).check(pools)
