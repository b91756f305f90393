"""``defense=none``: the undefended baseline (plain SFT on the user's data)."""

from sbr_bench.defenses.base import Defense


class NoDefense(Defense):
    """No regularizer, no extra data: the fine-tuning loss is the task loss alone."""

    stage = "attack"
