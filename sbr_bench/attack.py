"""The attacker's fine-tuning set: ``num_samples`` examples, a fraction ``poison_ratio`` harmful.

The HFT protocol (Vaccine, Lisa, Booster, SBR): ``round(p * n)`` harmful (prompt, compliant answer)
pairs, the rest drawn from the benign task's training split. The draw is seeded by
``attack.data_seed``, separate from the training seed, so a seed sweep keeps the same poisoned set
unless asked otherwise.
"""

from __future__ import annotations

import math
import random

from sbr_bench.data.bundled import Pair, Pools
from sbr_bench.errors import ConfigError


def num_harmful(num_samples: int, poison_ratio: float) -> int:
    """``round(p * n)``, rounding halves up (Python's round() would round 2.5 to 2)."""
    return math.floor(poison_ratio * num_samples + 0.5)


def build_attack_set(pools: Pools, num_samples: int, poison_ratio: float, data_seed: int) -> list[Pair]:
    """Draw and shuffle the attack set; fail with one clear line when the pools are too small."""
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
    chosen = rng.sample(pools.attack_harmful, n_harm) + rng.sample(pools.task_train, n_task)
    rng.shuffle(chosen)
    return chosen
