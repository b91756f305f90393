"""Agreement between harm judges: Cohen's kappa on the same answers.

Two judges that report similar harmful scores may still disagree on which answers are harmful;
kappa measures agreement beyond what their base rates give by chance (Cohen 1960):

    kappa = (p_o - p_e) / (1 - p_e)
    p_o   = share of answers both judges label alike
    p_e   = p_a * p_b + (1 - p_a) * (1 - p_b),   p_x = share judge x flags as harmful

Only answers both judges gave a verdict on count (a missing verdict is not a label). When both
judges put every answer in the same single class, p_e = p_o = 1 and the formula is 0/0; that is
perfect agreement and is reported as 1.0 (scikit-learn returns NaN there). With no answer judged
by both, kappa is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations


def cohen_kappa(a: Sequence[bool | None], b: Sequence[bool | None]) -> float:
    """Cohen's kappa of two binary labelings of the same items (None = no verdict, skipped)."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if not pairs:
        return math.nan
    n = len(pairs)
    p_o = sum(x == y for x, y in pairs) / n
    p_a = sum(x for x, _ in pairs) / n
    p_b = sum(y for _, y in pairs) / n
    p_e = p_a * p_b + (1 - p_a) * (1 - p_b)
    if p_e == 1.0:  # both judges used one and the same class throughout: they agree on every answer
        return 1.0
    return (p_o - p_e) / (1 - p_e)


def pairwise_kappa(verdicts: Mapping[str, Sequence[bool | None]]) -> dict[str, float]:
    """``{"<a>~<b>": kappa}`` for every pair of judges (names sorted, so each pair appears once)."""
    return {f"{a}~{b}": cohen_kappa(verdicts[a], verdicts[b]) for a, b in combinations(sorted(verdicts), 2)}
