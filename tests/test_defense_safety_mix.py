"""Safety-data mixing: the attack loader holds the user's data plus exactly the k refusal pairs."""

from __future__ import annotations

from collections import Counter

import pytest
from helpers import check_settings
from hydra.utils import instantiate

from sbr_bench.data.formatting import encode_pair
from sbr_bench.data.pools import Pair
from sbr_bench.defenses.safety_mix import SafetyMix
from sbr_bench.errors import ConfigError
from sbr_bench.training.fit import stage_loaders


def encoded(tokenizer, pairs, max_length=128):
    return Counter(tuple(encode_pair(tokenizer, p.prompt, p.response, max_length)["input_ids"]) for p in pairs)


def loaded(loader):
    """Every example of one epoch of the loader, unpadded, as token-id tuples."""
    rows = Counter()
    for batch in loader:
        for ids, n in zip(batch["input_ids"].tolist(), batch["attention_mask"].sum(1).tolist(), strict=True):
            rows[tuple(ids[:n])] += 1
    return rows


@pytest.mark.parametrize("k", [0, 7, 120])
def test_attack_loader_holds_user_data_and_the_first_k_refusals(toy, pools, k):
    _, tokenizer = toy
    user = [Pair(p.prompt, p.response) for p in pools.task_train[:20] + pools.attack_harmful[:3]]
    loader, streams = stage_loaders(SafetyMix(num_samples=k), pools, user, tokenizer, 128, 8, seed=0)
    assert streams == {}
    refusals = pools.align_harmful[:k]
    assert loaded(loader) == encoded(tokenizer, user) + encoded(tokenizer, refusals)
    assert len(loader.dataset) == len(user) + k


def test_ratio_counts_from_the_attack_size():
    assert SafetyMix(num_samples=None, ratio=0.5, attack_size=200).num_samples == 100  # Vaccine's 500 : 1000
    assert SafetyMix(num_samples=None, ratio=0.25, attack_size=10).num_samples == 3  # 2.5 rounds up
    assert SafetyMix(num_samples=None, ratio=0.0, attack_size=10).num_samples == 0


def test_config_default_and_ratio_through_hydra(make_cfg, pools):
    cfg = make_cfg(["model=toy", "defense=safety_mix"])
    assert instantiate(cfg.defense).num_samples == 100  # the default ratio 0.5 at the toy tier's n = 200
    cfg = make_cfg(["model=llama3_8b_instruct", "defense=safety_mix"])
    assert cfg.attack.num_samples == 1000 and instantiate(cfg.defense).num_samples == 500  # Vaccine's 500 : 1000
    cfg = make_cfg(["model=toy", "defense=safety_mix", "attack.num_samples=60"])
    mix = instantiate(cfg.defense)
    assert mix.num_samples == 30
    assert mix.extra_data(pools)["mix"] == pools.align_harmful[:30]
    cfg = make_cfg(["model=toy", "defense=safety_mix", "defense.ratio=null", "defense.num_samples=7"])
    assert instantiate(cfg.defense).num_samples == 7


def test_more_than_the_pool_holds_fails_with_the_pool_size(pools):
    with pytest.raises(ConfigError, match=r"asks for 121 refusal pairs but the alignment pool holds 120"):
        SafetyMix(num_samples=121).check(pools)
    with pytest.raises(ConfigError, match=r"asks for 500 refusal pairs"):
        SafetyMix(num_samples=None, ratio=0.5, attack_size=1000).extra_data(pools)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": -1}, "defense.num_samples=-1 must be >= 0"),
        ({"num_samples": 2.5}, "defense.num_samples=2.5 must be an integer"),
        ({"num_samples": 10, "ratio": 0.5, "attack_size": 200}, "set exactly one"),
        ({"num_samples": None}, "set exactly one"),
        ({"num_samples": None, "ratio": -0.1, "attack_size": 200}, "defense.ratio=-0.1 must be >= 0"),
        ({"num_samples": None, "ratio": 0.5}, "needs defense.attack_size"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        check_settings(SafetyMix, **kwargs)  # the types and ranges of the schema
        SafetyMix(**kwargs)  # the rule across keys, in the constructor
