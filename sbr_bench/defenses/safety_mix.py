"""``defense=safety_mix``: safety-data mixing (VLGuard, Zong et al. 2024; SafeInstr, Bianchi et al. 2023).

The provider adds safety demonstrations - harmful prompt -> refusal - to the user's fine-tuning data
and runs plain SFT on the union. This is the "Vlguard" baseline of the Vaccine and Lisa papers.

    L = CE(user data  U  k refusal pairs)

Arguments:
    ``ratio``        k = round(ratio * attack_size), the refusal pairs added (default 0.5: Vaccine's
                     1:2, 500 refusals into 1000 user samples; Lisa: 1000 / 5000 = 0.2), so k follows
                     the attack's n at every tier (100 at the CPU tiers' n = 200, 500 at n = 1000)
    ``num_samples``  or a fixed k; set ``ratio: null`` to use it
    ``attack_size``  the attack's n (``${attack.num_samples}`` in the YAML): the defense sees only
                     the data pools, so the config hands it the attack size for ``ratio``

Decisions:
    which pairs     the first k of ``pools.align_harmful`` in pool order, as both codes take the
                    first k ``is_safe`` BeaverTails samples in file order. The pool is a stratified
                    shuffle, so any prefix covers the harm categories evenly; the choice is
                    independent of every seed.
    added, not swapped   Vaccine's code adds the k pairs to the n user samples (n + k in all); Lisa's
                    code instead drops k benign task samples so the total stays n. The defense
                    cannot change the attacker's set, so it adds (Vaccine), and the attack keeps all
                    of its n samples, poisoned ones included.
    overlap         the pairs come from the alignment pool, as in both codes (their guide samples
                    are the first ``is_safe`` samples, which the alignment stage also trains on).
    too many        k larger than the pool is a ConfigError naming the pool size; the bundled pool
                    holds 120 (``data.harmful.align``), so Vaccine's 500 at n = 1000 is out of reach.
"""

from __future__ import annotations

import math
from typing import ClassVar

from sbr_bench.defenses.base import Defense
from sbr_bench.errors import ConfigError
from sbr_bench.schema import NonNegativeFloat, NonNegativeInt


class SafetyMix(Defense):
    """Refusal pairs mixed into the user's fine-tuning data; see the module docstring."""

    stage = "attack"
    plain_sft_at: ClassVar[dict] = {"ratio": 0}  # k = 0 refusal pairs mixed in: the user's data alone
    passes_per_step = 1

    def __init__(
        self,
        num_samples: NonNegativeInt | None = None,
        ratio: NonNegativeFloat | None = None,  # conf/defense/safety_mix.yaml: 0.5
        attack_size: NonNegativeInt | None = None,
    ):
        super().__init__()
        if (num_samples is None) == (ratio is None):
            raise ConfigError(
                f"defense.num_samples={num_samples} and defense.ratio={ratio}: set exactly one "
                "(defense.num_samples=null for the ratio, defense.ratio=null for the count)"
            )
        if ratio is not None:
            if attack_size is None:
                raise ConfigError(f"defense.ratio={ratio} needs defense.attack_size (the attack's num_samples)")
            num_samples = math.floor(ratio * attack_size + 0.5)  # round half up, like attack.num_harmful
        self.num_samples = int(num_samples)

    def check(self, pools) -> None:
        """k must not exceed the refusal pairs the alignment pool holds."""
        available = len(pools.align_harmful)
        if self.num_samples > available:
            raise ConfigError(
                f"defense=safety_mix asks for {self.num_samples} refusal pairs but the alignment pool holds "
                f"{available}; lower defense.num_samples / defense.ratio or raise data.harmful.align"
            )

    def effective_settings(self) -> dict[str, int]:
        """k, the refusal pairs added (from ``ratio`` x ``attack_size`` when the ratio is given)."""
        return {"num_samples": self.num_samples}

    def extra_data(self, pools):
        """``{"mix": the first k refusal pairs}``: added to the user's training data."""
        self.check(pools)
        return {"mix": list(pools.align_harmful[: self.num_samples])}
