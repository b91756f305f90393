"""The report's four plots, each as PNG (embedded in report.md) and PDF (vector, for papers).

Drawn with matplotlib's object API (``matplotlib.figure.Figure``, imported only when a plot is
drawn): no pyplot, no global backend switched, so a notebook that calls the report keeps its own.
A defense has one colour in every plot and every report (``defense_colour``).

- ``hs_vs_poison_ratio.png``: HS after vs ``attack.poison_ratio``, a line per defense (and per
  value of any other swept setting), 95 % CI error bars: the x-axis of the HFT papers' poison-ratio
  tables.
- ``hs_vs_lambda.png``: HS after vs ``defense.lam`` for the defenses that have a ``lam`` (SBR,
  Booster, EWC, L2-SP), the no-defense level as a dashed horizontal line: the SBR paper's lambda
  ablation.
- ``hs_vs_epoch.png``: HS vs epoch of the attack, from ``metrics.json``'s ``curves``
  (``eval.during_attack``), mean over seeds with a shaded CI: the SBR paper's persistent-HFT figure.
- ``hs_vs_fa.png``: HS after vs FA, one colour and marker per defense, error bars on both axes:
  the safety / utility trade-off.

A plot needs its axis to vary: when the sweep has one poison ratio, no lam sweep or no curves,
``Skip`` carries one line saying why and which override to sweep. No empty or made-up plot is ever
written.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from sbr_bench.defenses import defense_options
from sbr_bench.reporting.aggregate import Setting
from sbr_bench.reporting.collect import override_key, shared_overrides
from sbr_bench.reporting.stats import finite, summarize

HS = "eval/harmful_score"
FA = "eval/finetune_acc"
MARKERS = "osD^vP*Xh<>p"


class Skip(Exception):  # not an error: the plot has nothing to show
    """The plot is not drawn; the message says why and how to get it."""


PALETTE = (  # matplotlib's tab10 without its grey, which is kept for defense=none
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
)  # fmt: skip
NONE_COLOUR = "#7f7f7f"


def defense_colour(defense: str) -> str:
    """The same colour for a defense in every plot: ``none`` grey, an option by its place among the
    sorted options, anything else (a stack ``vaccine+sbr``, an outside defense) by a hash of its name."""
    if defense == "none":
        return NONE_COLOUR
    options = [o for o in defense_options() if o != "none"]
    if defense in options:
        return PALETTE[options.index(defense) % len(PALETTE)]
    import hashlib

    return PALETTE[int(hashlib.sha256(defense.encode()).hexdigest(), 16) % len(PALETTE)]


def _figure(figsize=(6, 4)):
    """A figure and its axes, outside pyplot (no backend state, nothing to close)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def hs_label(text: str, judge: str | None) -> str:
    """An HS axis label, naming the judge when the report shows one judge's HS (``--judge``)."""
    return text if judge is None else f"{text}, judge {judge}"


def _err(summary) -> float:
    return 0.0 if summary.ci95 is None else summary.ci95


def _bounded(means, errors) -> list[list[float]]:
    """Asymmetric error bars cut at 0 and 100: a percentage's interval says nothing beyond them
    (with 2 seeds, t = 12.7 easily reaches past either end). The tables keep the raw half-width."""
    return [
        [min(e, m) for m, e in zip(means, errors, strict=True)],
        [min(e, 100 - m) for m, e in zip(means, errors, strict=True)],
    ]


def series(rows: list[Setting], axis: str) -> dict[str, list[tuple[float, Setting]]]:
    """Rows grouped into lines along ``axis``: same defense and same setting apart from ``axis``.

    Lines are labelled by the defense plus whatever else differs between lines; each line's points
    are sorted by x. Rows without a numeric value of ``axis`` are left out.
    """
    lines: dict[tuple, list[tuple[float, Setting]]] = defaultdict(list)
    for row in rows:
        x = row.param(axis)
        if x is None or not finite(row.mean(HS)):
            continue
        rest = tuple(o for o in row.key if override_key(o) != axis)
        lines[(row.defense, rest)].append((x, row))
    keys = list(lines)
    common = set.intersection(*(set(rest) for _, rest in keys)) if keys else set()
    labelled = {}
    for defense, rest in keys:
        extra = " ".join(o for o in rest if o not in common)
        labelled[f"{defense} {extra}".strip()] = sorted(lines[(defense, rest)], key=lambda p: p[0])
    return labelled


def _varies(lines: dict[str, list[tuple[float, Setting]]]) -> bool:
    return any(len({x for x, _ in points}) > 1 for points in lines.values())


def _save(fig, path: Path) -> Path:
    """``path`` (PNG) and the same plot as PDF beside it."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.savefig(path.with_suffix(".pdf"))
    return path


def _line_plot(lines, ax, **scale) -> None:
    per_defense: dict[str, int] = defaultdict(int)  # several lines of one defense: one colour, other markers
    for label, points in lines.items():
        defense = points[0][1].defense
        xs = [x for x, _ in points]
        ys = [row.mean(HS) for _, row in points]
        errors = [_err(row.summaries[HS]) for _, row in points]
        marker = MARKERS[per_defense[defense] % len(MARKERS)]
        per_defense[defense] += 1
        ax.errorbar(
            xs, ys, yerr=_bounded(ys, errors), marker=marker, capsize=3, label=label, color=defense_colour(defense)
        )


def hs_vs_poison_ratio(rows: list[Setting], path: Path, judge: str | None = None) -> Path:
    lines = series(rows, "attack.poison_ratio")
    if not _varies(lines):
        raise Skip(
            "no defense was run at more than one attack.poison_ratio; sweep it, e.g. attack.poison_ratio=0.05,0.1,0.2"
        )
    fig, ax = _figure()
    _line_plot(lines, ax)
    ax.set(
        xlabel="poison ratio p (attack.poison_ratio)",
        ylabel=hs_label("HS after attack (%)", judge),
        title="Harmful score vs poison ratio",
    )
    ax.legend(fontsize="small")
    return _save(fig, path)


def hs_vs_lambda(rows: list[Setting], path: Path, judge: str | None = None) -> Path:
    with_lam = [r for r in rows if r.param("defense.lam") is not None]
    lines = series(with_lam, "defense.lam")
    if not _varies(lines):
        raise Skip(
            "no defense with a lam was run at more than one defense.lam; sweep it, e.g. defense=sbr defense.lam=0,5,50"
        )
    fig, ax = _figure()
    _line_plot(lines, ax)
    references = [r for r in rows if r.defense == "none" and finite(r.mean(HS))]
    common = _common(references)
    for i, row in enumerate(references):
        extra = " ".join(o for o in row.key if o not in common)
        style = ("--", ":", "-.")[i % 3]
        ax.axhline(row.mean(HS), linestyle=style, color="gray", label=f"none (no defense) {extra}".strip())
    lams = [x for points in lines.values() for x, _ in points]
    positive = [x for x in lams if x > 0]
    if positive and max(lams) / min(positive) > 100:  # lam spans orders of magnitude (0, 5, 50, 500)
        ax.set_xscale("symlog", linthresh=min(positive))
    ylabel = hs_label("HS after attack (%)", judge)
    ax.set(xlabel="lambda (defense.lam)", ylabel=ylabel, title="Harmful score vs lambda")
    ax.legend(fontsize="small")
    return _save(fig, path)


def _common(rows: list[Setting]) -> set[str]:
    """The setting overrides every row shares (left out of the labels, which name what differs)."""
    return set(shared_overrides([r.key for r in rows]))


def epoch_curve(row: Setting) -> list[tuple[float, float, float]]:
    """(epoch, mean HS, CI half-width or 0) over the setting's jobs that recorded a curve."""
    by_epoch: dict[float, list[float]] = defaultdict(list)
    for job in row.jobs:
        curves = job.curves or {}
        for epoch, hs in zip(curves.get("epoch", []), curves.get("harmful_score", []), strict=False):
            if finite(epoch) and finite(hs):
                by_epoch[round(float(epoch), 6)].append(float(hs))
    points = []
    for epoch in sorted(by_epoch):
        s = summarize(by_epoch[epoch])
        points.append((epoch, s.mean, _err(s)))
    return points


def hs_vs_epoch(rows: list[Setting], path: Path, judge: str | None = None) -> Path:
    curves = [(row, epoch_curve(row)) for row in rows]
    curves = [(row, points) for row, points in curves if len(points) > 1]
    if not curves:
        raise Skip("no job recorded a harmful-score curve over the attack; record one with eval.during_attack.every=1")
    common = _common([row for row, _ in curves])
    fig, ax = _figure()
    for row, points in curves:
        epochs, means, errors = zip(*points, strict=True)
        label = f"{row.defense} {' '.join(o for o in row.key if o not in common)}".strip()
        (line,) = ax.plot(epochs, means, marker="o", markersize=3, label=label, color=defense_colour(row.defense))
        low = [max(m - e, 0) for m, e in zip(means, errors, strict=True)]  # a percentage: cut at 0 and 100
        high = [min(m + e, 100) for m, e in zip(means, errors, strict=True)]
        ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set(xlabel="epoch of the attack", ylabel=hs_label("HS (%)", judge), title="Harmful score during the attack")
    ax.legend(fontsize="small")
    return _save(fig, path)


def hs_vs_fa(rows: list[Setting], path: Path, judge: str | None = None) -> Path:
    points = [r for r in rows if finite(r.mean(HS)) and finite(r.mean(FA))]
    if not points:
        raise Skip(
            "no setting has both an HS after and an FA (the task has no accuracy); use a data option with a task"
        )
    common = _common(points)
    defenses = list(dict.fromkeys(r.defense for r in points))
    fig, ax = _figure()
    for i, defense in enumerate(defenses):
        mine = [r for r in points if r.defense == defense]
        ax.errorbar(
            [r.mean(FA) for r in mine],
            [r.mean(HS) for r in mine],
            xerr=_bounded([r.mean(FA) for r in mine], [_err(r.summaries[FA]) for r in mine]),
            yerr=_bounded([r.mean(HS) for r in mine], [_err(r.summaries[HS]) for r in mine]),
            fmt=MARKERS[i % len(MARKERS)],
            color=defense_colour(defense),
            capsize=3,
            label=defense,
        )
    if len(points) > len(defenses):  # several points per defense: say which setting each is
        for r in points:
            text = " ".join(o for o in r.key if o not in common)
            ax.annotate(text, (r.mean(FA), r.mean(HS)), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ylabel = hs_label("HS after attack (%)", judge)
    ax.set(xlabel="FA after attack (%)", ylabel=ylabel, title="Harmful score vs fine-tune accuracy")
    ax.legend(fontsize="small")
    return _save(fig, path)


PLOTS: dict[str, Callable[..., Path]] = {  # (rows, path, judge=None) -> path
    "hs_vs_poison_ratio.png": hs_vs_poison_ratio,
    "hs_vs_lambda.png": hs_vs_lambda,
    "hs_vs_epoch.png": hs_vs_epoch,
    "hs_vs_fa.png": hs_vs_fa,
}


def draw(rows: list[Setting], folder: Path, say: Callable[[str], None], judge: str | None = None) -> dict[str, str]:
    """Every plot into ``folder``; returns file name -> "written" or the reason it is not there.

    ``judge``: the judge whose HS the rows hold (``sbr-bench-report --judge``), named on the HS axes.

    A plot that fails is one line through ``say`` and the others still run: a plot never costs the
    tables (written before this is called).
    """
    outcome = {}
    if not rows:
        return {name: "skipped: no job finished" for name in PLOTS}
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        message = "plots skipped: matplotlib is not installed; pip install 'matplotlib>=3.8'"
        say(message)
        return {name: message for name in PLOTS}
    folder.mkdir(parents=True, exist_ok=True)
    for name, plot in PLOTS.items():
        try:
            plot(rows, folder / name, judge=judge)
            outcome[name] = "written"
        except Skip as reason:
            outcome[name] = f"skipped: {reason}"
            say(f"{name} skipped: {reason}")
        except Exception as err:  # a plotting bug must not lose the sweep's results
            outcome[name] = f"failed: {type(err).__name__}: {err}"
            say(f"{name} failed: {type(err).__name__}: {err}".splitlines()[0])
    return outcome
