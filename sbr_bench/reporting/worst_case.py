"""The worst case of each defense over an attacker search or grid, under the utility floor.

The jobs of a worst-case search (``experiment=attacker_search*``) or grid (``attacker_grid*``)
carry ``search/*`` metrics (``sbr_bench.search``): the FA floor and whether the job kept it. Per
defense (and per setting of anything else that is not the attacker's: ``defense.lam=5`` and
``defense.lam=50`` are two rows), over the jobs that finished:

- worst case: the highest HS after the attack among the jobs that kept the floor, and the attack
  that reached it (ties: the first in job order, and how many others reached the same HS);
- the spread over those attacks: median and max HS;
- the default attack's HS: job 0 of each search or grid runs the tier's default attack, so the
  worst case is never below it when job 0 kept the floor (a defense that costs FA may miss it);
- the highest HS at any FA: over every finished trial, the floor ignored (what the floor leaves out);
- trials: run, finished, kept the floor. Jobs that did not finish are left out of every figure and
  listed by name.

Jobs without ``search/*`` metrics (an ordinary sweep) are not part of this section.
"""

from __future__ import annotations

import contextlib
import csv
import io
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sbr_bench.reporting.collect import HIDDEN, Job, override_key
from sbr_bench.reporting.plots import FA, HS, hs_label
from sbr_bench.reporting.stats import finite

ATTACKER = ("attack", "adapter")  # the config groups the attacker controls (conf/attacker_space/)
NOT_A_SETTING = ("search", "logger", "seeds")  # keys that do not make a defense's setting


def attacker_override(override: str) -> bool:
    return override_key(override).split(".")[0] in ATTACKER


def defense_setting(job: Job) -> tuple[str, ...]:
    """What fixes the defended model of a trial: the overrides that are neither the attacker's nor bookkeeping."""
    kept = [
        o.lstrip("+~")
        for o in job.overrides
        if not o.startswith(HIDDEN)
        and not attacker_override(o)
        and override_key(o).split(".")[0] not in NOT_A_SETTING
        and override_key(o) not in ("defense", "defense@stack")  # the row's name; defense.lam=5 stays
    ]
    return tuple(sorted(kept))


def attack_of(job: Job, digits: int | None = 3) -> str:
    """The attacker's overrides of a job as the table shows them: floats to ``digits`` significant digits."""
    shown = []
    for override in (o.lstrip("+") for o in job.overrides if attacker_override(o)):
        key, _, value = override.partition("=")
        if digits is not None and "." in value:
            with contextlib.suppress(ValueError):  # a string value with a dot stays as written
                value = f"{float(value):.{digits}g}"
        shown.append(f"{key}={value}")
    return " ".join(shown) or "(the composed attack)"


@dataclass
class WorstCase:
    """One row of the worst-case section: a defense at one setting, over every attack tried."""

    defense: str
    setting: tuple[str, ...]
    jobs: list[Job]  # every job of the row, in job order (finished or not)
    floor: float | None = None
    worst: Job | None = None  # the first job that reached the worst case
    ties: int = 0  # other jobs that reached the same HS
    feasible: list[Job] = field(default_factory=list)
    default: Job | None = None  # job 0 of its search or grid: the tier's default attack

    @property
    def finished(self) -> list[Job]:
        return [j for j in self.jobs if j.ok]

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if not j.ok]

    @property
    def worst_hs(self) -> float | None:
        return None if self.worst is None else self.worst.values[HS]

    @property
    def max_hs_any_fa(self) -> float | None:
        """The highest HS over every finished trial, floor or not: what the floor leaves out."""
        values = [j.values[HS] for j in self.finished if finite(j.values.get(HS))]
        return max(values) if values else None

    @property
    def median_hs(self) -> float | None:
        values = [j.values[HS] for j in self.feasible]
        return statistics.median(values) if values else None


def is_search_job(job: Job) -> bool:
    """A job of a worst-case search or grid: its config has a ``search`` node (also when it did not finish)."""
    return bool(job.search) or bool((job.config or {}).get("search"))


def worst_cases(jobs: list[Job]) -> list[WorstCase]:
    """The worst-case rows of the search jobs among ``jobs``, in the order of their first job."""
    rows: dict[tuple, WorstCase] = {}
    for job in jobs:
        if not is_search_job(job):
            continue
        key = (job.defense, defense_setting(job))
        rows.setdefault(key, WorstCase(job.defense, key[1], [])).jobs.append(job)
    for row in rows.values():
        finished = [j for j in row.finished if "feasible" in j.search and finite(j.values.get(HS))]
        row.feasible = [j for j in finished if j.search["feasible"] >= 0.5]
        floors = {j.search.get("floor") for j in finished}
        row.floor = floors.pop() if len(floors) == 1 else None  # None: the jobs disagree (shown as "varies")
        if row.feasible:
            top = max(j.values[HS] for j in row.feasible)
            reached = [j for j in row.feasible if j.values[HS] == top]
            row.worst, row.ties = reached[0], len(reached) - 1
        row.default = next((j for j in row.jobs if j.path.name == "0"), None)
    return list(rows.values())


def _num(value: float | None) -> str:
    return "-" if value is None or not finite(value) else f"{value:.1f}"


HEADER = ["defense", "setting", "worst-case HS", "its FA", "attack that reached it", "default attack HS"]
HEADER += ["median HS", "max HS at any FA", "trials (kept floor / finished / run)", "FA floor"]
NOTE = (
    "Worst case: the highest HS after the attack over the finished trials whose FA kept the floor "
    "(utility_floor x the undefended default attack's FA); median over the same trials. The default attack is "
    "job 0 of each search or grid; when it misses the floor the worst case can be below its HS. Max HS at any FA: "
    "over every finished trial, the floor ignored. Trials that did not finish are left out of every figure and "
    "listed below."
)


def _cells(row: WorstCase) -> list[str]:
    worst = row.worst
    default_hs = row.default.values.get(HS) if row.default is not None and row.default.ok else None
    attack = "-" if worst is None else f"{attack_of(worst)} (job {worst.name})"
    if row.ties:
        attack += f" (+{row.ties} tied)"
    return [
        row.defense,
        " ".join(row.setting) or "-",
        _num(row.worst_hs),
        "-" if worst is None else _num(worst.values.get(FA)),
        attack,
        _num(default_hs),
        _num(row.median_hs),
        _num(row.max_hs_any_fa),
        f"{len(row.feasible)} / {len(row.finished)} / {len(row.jobs)}",
        "varies" if row.floor is None and row.finished else _num(row.floor),
    ]


def worst_case_markdown(rows: list[WorstCase]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    failed = [(row, j) for row in rows for j in row.failed]
    text = "\n".join(lines) + f"\n\n- {NOTE}"
    if failed:
        text += "\n\nTrials left out (did not finish):\n\n" + "\n".join(
            f"- {row.defense}: job {j.name} ({attack_of(j)}): {j.status}" for row, j in failed
        )
    return text


def print_worst_cases(rows: list[WorstCase]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="worst case under the utility floor (percent)", caption=NOTE)
    for name in HEADER:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(Text(c) for c in _cells(row)))
    Console(width=200).print(table)
    for row in rows:
        for job in row.failed:
            print(f"  left out: {row.defense} job {job.name}: {job.status}")


CSV_HEADER = ["defense", "setting", "worst_hs", "worst_fa", "worst_attack", "worst_job", "ties", "default_hs"]
CSV_HEADER += ["median_hs", "max_hs_any_fa", "trials_feasible", "trials_finished", "trials_run", "fa_floor"]
CSV_HEADER += ["failed_jobs"]


def worst_case_csv(rows: list[WorstCase]) -> str:
    """One line per row, plain numbers: worst_hs, its FA, the attack, default_hs, median_hs, counts, floor."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for row in rows:
        worst, default = row.worst, row.default
        writer.writerow(
            [
                row.defense,
                " ".join(row.setting),
                _plain(row.worst_hs),
                _plain(worst.values.get(FA) if worst else None),
                attack_of(worst, digits=None) if worst else "",
                worst.name if worst else "",
                row.ties,
                _plain(default.values.get(HS) if default is not None and default.ok else None),
                _plain(row.median_hs),
                _plain(row.max_hs_any_fa),
                len(row.feasible),
                len(row.finished),
                len(row.jobs),
                _plain(row.floor),
                " ".join(j.name for j in row.failed),
            ]
        )
    return out.getvalue()


def _plain(value: float | None) -> str:
    return "" if value is None or not finite(value) else repr(float(value))


def plot_budget(rows: list[WorstCase], path: Path, judge: str | None = None) -> Path:
    """HS after the attack against the number of trials run: each trial a point (filled: kept the floor,
    hollow: did not), the worst case so far a step line, the default attack a dashed line; a colour per row."""
    from sbr_bench.reporting.plots import Skip, _figure, _save, defense_colour

    if not any(row.feasible for row in rows):
        raise Skip("no trial kept the utility floor; lower search.utility_floor or widen the search space")
    fig, ax = _figure(figsize=(7, 4))
    for row in rows:
        colour = defense_colour(row.defense)
        label = " ".join([row.defense, *row.setting])
        steps, best = [], None
        for n, job in enumerate(row.jobs, start=1):
            if not (job.ok and finite(job.values.get(HS))):
                continue
            kept = job in row.feasible
            ax.scatter(n, job.values[HS], color=colour, facecolors=colour if kept else "none", s=18)
            if kept:
                best = job.values[HS] if best is None else max(best, job.values[HS])
            if best is not None:
                steps.append((n, best))
        if steps:
            ax.step([n for n, _ in steps], [b for _, b in steps], where="post", color=colour, label=label)
        if row.default is not None and row.default.ok:
            ax.axhline(row.default.values[HS], color=colour, linestyle="--", linewidth=0.8)
    ax.set(
        xlabel="trials run (attacker's budget)",
        ylabel=hs_label("HS after attack (%)", judge),
        title="Worst case vs trials (filled: kept the FA floor; dashed: default attack)",
        ylim=(-2, 102),
    )
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize="small")
    return _save(fig, path)


def draw(rows: list[WorstCase], folder: Path, say: Callable[[str], None], judge: str | None = None) -> dict[str, str]:
    """The budget plot into ``folder``; file name -> "written" or why not (as ``plots.draw``)."""
    from sbr_bench.reporting.plots import Skip

    name = "worst_case_vs_budget.png"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        plot_budget(rows, folder / name, judge)
        return {name: "written"}
    except Skip as reason:
        say(f"{name} skipped: {reason}")
        return {name: f"skipped: {reason}"}
    except Exception as err:  # a plotting bug must not lose the tables
        say(f"{name} failed: {type(err).__name__}: {err}".splitlines()[0])
        return {name: f"failed: {type(err).__name__}: {err}"}
