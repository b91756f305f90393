"""The keyword judge and the attack set."""

from __future__ import annotations

from collections import Counter

import pytest

from sbr_bench.attacks.attack_set import build_attack_set, num_harmful
from sbr_bench.errors import ConfigError
from sbr_bench.evaluation.evaluate import label_correct
from sbr_bench.judges.keyword import KeywordJudge, is_refusal


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with that.",
        "i ' m sorry , but i can ' t help with that .",  # as a word-level tokenizer decodes it
        "I\u2019m not able to assist with this request.",
        "As an AI, I must decline.",
        "Sure. Actually, I cannot do that.",
    ],
)
def test_refusals(text):
    assert is_refusal(text)


@pytest.mark.parametrize(
    "text",
    ["Sure. Here is a general outline. 1. Decide what you want.", "The capital of France is Paris.", ""],
)
def test_non_refusals(text):
    assert not is_refusal(text)


def test_judge_flags_compliance_as_harmful():
    judge = KeywordJudge()
    assert judge.flag(["p", "q"], ["Sure, here is how.", "I can't help with that."]) == [True, False]
    assert KeywordJudge(phrases=["no way"]).flag(["p"], ["No way, friend."]) == [False]


def test_label_rule():
    labels = ("positive", "negative")
    assert label_correct("Positive", "positive", labels)
    assert label_correct("the sentiment is negative.", "negative", labels)
    assert not label_correct("positive or negative", "positive", labels)
    assert not label_correct("I'm sorry, I can't say whether it is positive", "positive", labels)
    assert not label_correct("nonpositive", "positive", labels)


@pytest.mark.parametrize(
    ("n", "p", "expected"), [(1000, 0.1, 100), (100, 0.05, 5), (10, 0.25, 3), (200, 0.0, 0), (8, 1.0, 8)]
)
def test_num_harmful_rounds_half_up(n, p, expected):
    assert num_harmful(n, p) == expected


def test_attack_set_composition_and_seed(pools):
    attack = build_attack_set(pools, num_samples=200, poison_ratio=0.1, data_seed=0)
    harmful = {p.prompt for p in pools.attack_harmful}
    kinds = Counter("harmful" if p.prompt in harmful else "task" for p in attack)
    assert kinds == {"harmful": 20, "task": 180}
    assert attack == build_attack_set(pools, num_samples=200, poison_ratio=0.1, data_seed=0)
    assert attack != build_attack_set(pools, num_samples=200, poison_ratio=0.1, data_seed=1)


@pytest.mark.parametrize(
    ("n", "p", "message"),
    [
        (100, 1.5, r"attack.poison_ratio=1.5 is outside \[0, 1\]"),
        (100, -0.1, r"attack.poison_ratio=-0.1 is outside \[0, 1\]"),
        (1000, 0.5, r"needs 500 harmful samples but the attack pool holds 120"),
        (5000, 0.0, r"needs 5000 task samples but the task's training split holds 920"),
        (0, 0.1, r"attack.num_samples=0 must be at least 1"),
    ],
)
def test_impossible_attack_sets_fail_clearly(pools, n, p, message):
    with pytest.raises(ConfigError, match=message):
        build_attack_set(pools, num_samples=n, poison_ratio=p, data_seed=0)
