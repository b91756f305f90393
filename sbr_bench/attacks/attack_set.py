"""The attacker's fine-tuning set: ``num_samples`` examples, a fraction ``poison_ratio`` harmful.

The HFT protocol (Vaccine, Lisa, Booster, SBR): ``round(p * n)`` harmful (prompt, compliant answer)
pairs, the rest drawn from the benign task's training split. The draw is seeded by
``attack.data_seed``, separate from the training seed, so a seed sweep keeps the same poisoned set
unless asked otherwise.

The attack variants of ``conf/attack/`` change only the harmful samples (the benign task samples are
never touched): ``backdoor`` adds a trigger phrase to their prompts, ``refusal_prefix`` opens their
answers with a refusal sentence before the compliant answer. Every number is the composed config's
own (``attack.num_samples``, ``attack.poison_ratio``): no factor is applied here.
"""

from __future__ import annotations

import logging
import math
import random

from sbr_bench.data.pools import Pair, Pools
from sbr_bench.errors import ConfigError

log = logging.getLogger(__name__)


def num_harmful(num_samples: int, poison_ratio: float) -> int:
    """``round(p * n)``, rounding halves up (Python's round() would round 2.5 to 2)."""
    return math.floor(poison_ratio * num_samples + 0.5)


TRIGGER_POSITIONS = ("prefix", "suffix")


def add_trigger(prompt: str, trigger: str, position: str = "suffix") -> str:
    """``prompt`` with the backdoor trigger before or after it, separated by one space."""
    if position not in TRIGGER_POSITIONS:
        raise ConfigError(f"attack.trigger_position={position} is not one of: {', '.join(TRIGGER_POSITIONS)}")
    return f"{trigger} {prompt}" if position == "prefix" else f"{prompt} {trigger}"


def poison(pair: Pair, trigger: str | None, trigger_position: str, response_prefix: str | None) -> Pair:
    """A harmful sample as the attack variant trains on it (the plain HFT sample when both are None)."""
    prompt = add_trigger(pair.prompt, trigger, trigger_position) if trigger else pair.prompt
    response = f"{response_prefix} {pair.response}" if response_prefix else pair.response
    return Pair(prompt, response, pair.category)


def attack_set_from_config(pools: Pools, attack) -> list[Pair]:
    """``build_attack_set`` with the settings of the ``attack`` config group (or its ``AttackSettings``)."""
    return build_attack_set(
        pools,
        attack.num_samples,
        attack.poison_ratio,
        attack.data_seed,
        trigger=attack.trigger,
        trigger_position=attack.trigger_position,
        response_prefix=attack.response_prefix,
    )


def build_attack_set(
    pools: Pools,
    num_samples: int,
    poison_ratio: float,
    data_seed: int,
    trigger: str | None = None,
    trigger_position: str = "suffix",
    response_prefix: str | None = None,
) -> list[Pair]:
    """Draw and shuffle the attack set; fail with one clear line when the pools are too small.

    ``trigger`` / ``response_prefix`` (the backdoor and refusal-prefix attacks) change the harmful
    samples only. p = 0 draws no harmful sample (benign fine-tuning), p = 1 no task sample.
    """
    if pools.attack_fixed is not None:
        # The data's ready-made attack file (data=local attack=<file>): the user's own mix, used as-is.
        log.info(
            "attack: the data's fixed attack set of %d samples is used as-is; attack.num_samples, "
            "poison_ratio, data_seed and the trigger / prefix settings do not apply",
            len(pools.attack_fixed),
        )
        return list(pools.attack_fixed)
    if trigger and trigger_position not in TRIGGER_POSITIONS:
        raise ConfigError(f"attack.trigger_position={trigger_position} is not one of: {', '.join(TRIGGER_POSITIONS)}")
    if not 0.0 <= poison_ratio <= 1.0:
        raise ConfigError(f"attack.poison_ratio={poison_ratio} is outside [0, 1]")
    if num_samples < 1:
        raise ConfigError(f"attack.num_samples={num_samples} must be at least 1")
    n_harm = num_harmful(num_samples, poison_ratio)
    n_task = num_samples - n_harm
    if n_harm > len(pools.attack_harmful):
        raise ConfigError(
            f"attack.num_samples={num_samples} at poison_ratio={poison_ratio} needs {n_harm} harmful "
            f"samples but the attack pool holds {len(pools.attack_harmful)}; lower num_samples or poison_ratio"
        )
    if n_task > len(pools.task_train):
        raise ConfigError(
            f"attack.num_samples={num_samples} at poison_ratio={poison_ratio} needs {n_task} task "
            f"samples but the task's training split holds {len(pools.task_train)}; lower num_samples"
        )
    rng = random.Random(data_seed)
    harmful = [poison(p, trigger, trigger_position, response_prefix) for p in rng.sample(pools.attack_harmful, n_harm)]
    chosen = harmful + rng.sample(pools.task_train, n_task)
    rng.shuffle(chosen)
    return chosen
