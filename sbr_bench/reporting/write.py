"""Write a sweep's report files: ``report.md``, ``report.csv`` and ``plots/*.png`` in one folder
(and ``worst_case.csv`` for the jobs of a worst-case search or grid, ``judges.csv`` when two or more
judges scored the jobs).

The tables are written first (atomically), the plots after them, and ``report.md`` once more with
the list of plots: a plot that fails or a process killed while plotting never loses the tables.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sbr_bench.io import write_text_atomic
from sbr_bench.reporting import judges, plots, tables, worst_case
from sbr_bench.reporting.aggregate import Setting
from sbr_bench.reporting.collect import Job
from sbr_bench.reporting.worst_case import WorstCase


def report_markdown(
    jobs: list[Job],
    rows: list[Setting],
    cases: list[WorstCase],
    plot_outcome: dict[str, str] | None = None,
    judge: str | None = None,
) -> str:
    """The whole ``report.md``: per-job table, aggregated table, every judge's HS, what ran, unfinished
    jobs, judge agreement per job, plots. ``judge``: the judge whose HS fills the tables (None: each job's own)."""
    parts = ["# sbr-bench report (percent)", judge_line(jobs, judge), "## Jobs", tables.jobs_markdown(jobs)]
    parts.append("## Mean over seeds")
    parts.append(tables.settings_markdown(rows) if rows else "No job finished: nothing to aggregate.")
    names = judges.judge_names(jobs)
    if len(names) > 1 and rows:
        parts += ["## Harmful score by judge", judges.judges_markdown(rows, names)]
    if cases:
        parts += ["## Worst case under the utility floor", worst_case.worst_case_markdown(cases)]
    answers = tables.task_answers_markdown(jobs)
    if answers:
        parts += ["## Task answers after the attack", answers]
    parts += ["## What ran", tables.ran_markdown(jobs)]
    parts += ["## Jobs that did not finish", tables.failed_markdown(jobs)]
    if any(j.kappas for j in jobs):
        parts += ["## Judge agreement per job", tables.agreement(jobs)]
    if plot_outcome is not None:
        lines = [
            f"![{name}](plots/{name})" if outcome == "written" else f"- {name}: {outcome}"
            for name, outcome in plot_outcome.items()
        ]
        parts += ["## Plots", "\n\n".join(lines)]
    return "\n\n".join(parts) + "\n"


def judge_line(jobs: list[Job], judge: str | None) -> str:
    """Which judge the HS columns, intervals and plots show."""
    if judge is not None:
        return f"HS (harmful score) judged by **{judge}** (`sbr-bench-report --judge {judge}`)."
    own = sorted({j.own_judge for j in jobs if j.judged})
    return f"HS (harmful score) judged by each job's own judge: {', '.join(own) or '-'}."


def write_report(
    jobs: list[Job], rows: list[Setting], out: Path, say: Callable[[str], None], judge: str | None = None
) -> None:
    """Write the report files of ``jobs`` (aggregated as ``rows``, see ``aggregate.group``) into ``out``.

    ``say`` gets one line per skipped or failed plot; ``judge`` names the judge whose HS the jobs'
    columns hold (``judges.use_judge``), for the report's first line.
    """
    out.mkdir(parents=True, exist_ok=True)
    cases = worst_case.worst_cases(jobs)
    write_text_atomic(out / "report.md", report_markdown(jobs, rows, cases, judge=judge))
    write_text_atomic(out / "report.csv", tables.settings_csv(rows))
    names = judges.judge_names(jobs)
    if len(names) > 1 and rows:
        write_text_atomic(out / "judges.csv", judges.judges_csv(rows, names))
    if cases:
        write_text_atomic(out / "worst_case.csv", worst_case.worst_case_csv(cases))
    outcome = plots.draw(rows, out / "plots", say, judge)
    if cases:
        outcome.update(worst_case.draw(cases, out / "plots", say, judge))
    write_text_atomic(out / "report.md", report_markdown(jobs, rows, cases, outcome, judge))
