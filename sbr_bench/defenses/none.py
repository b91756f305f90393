"""``defense=none``: the undefended baseline (plain SFT on the user's data)."""

from typing import ClassVar

from sbr_bench.defenses.base import Defense


class NoDefense(Defense):
    """No regularizer, no extra data: the fine-tuning loss is the task loss alone."""

    stage = "attack"
    plain_sft_at: ClassVar[dict] = {}  # it is plain SFT
    passes_per_step = 1
