"""Write a sweep's report files: ``report.md``, ``report.csv`` and ``plots/*.png`` in one folder
(and ``worst_case.csv`` for the jobs of a worst-case search or grid).

The tables are written first (atomically), the plots after them, and ``report.md`` once more with
the list of plots: a plot that fails or a process killed while plotting never loses the tables.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sbr_bench.io import write_text_atomic
from sbr_bench.reporting import plots, tables, worst_case
from sbr_bench.reporting.aggregate import Setting
from sbr_bench.reporting.collect import Job
from sbr_bench.reporting.worst_case import WorstCase


def report_markdown(
    jobs: list[Job], rows: list[Setting], cases: list[WorstCase], plot_outcome: dict[str, str] | None = None
) -> str:
    """The whole ``report.md``: per-job table, aggregated table, what ran, unfinished jobs, judge agreement, plots."""
    parts = ["# sbr-bench report (percent)", "## Jobs", tables.jobs_markdown(jobs), "## Mean over seeds"]
    parts.append(tables.settings_markdown(rows) if rows else "No job finished: nothing to aggregate.")
    if cases:
        parts += ["## Worst case under the utility floor", worst_case.worst_case_markdown(cases)]
    parts += ["## What ran", tables.ran_markdown(jobs)]
    parts += ["## Jobs that did not finish", tables.failed_markdown(jobs)]
    if any(j.kappas for j in jobs):
        parts += ["## Judge agreement", tables.agreement(jobs)]
    if plot_outcome is not None:
        lines = [
            f"![{name}](plots/{name})" if outcome == "written" else f"- {name}: {outcome}"
            for name, outcome in plot_outcome.items()
        ]
        parts += ["## Plots", "\n\n".join(lines)]
    return "\n\n".join(parts) + "\n"


def write_report(jobs: list[Job], rows: list[Setting], out: Path, say: Callable[[str], None]) -> None:
    """Write the report files of ``jobs`` (aggregated as ``rows``, see ``aggregate.group``) into ``out``.

    ``say`` gets one line per skipped or failed plot.
    """
    out.mkdir(parents=True, exist_ok=True)
    cases = worst_case.worst_cases(jobs)
    write_text_atomic(out / "report.md", report_markdown(jobs, rows, cases))
    write_text_atomic(out / "report.csv", tables.settings_csv(rows))
    if cases:
        write_text_atomic(out / "worst_case.csv", worst_case.worst_case_csv(cases))
    outcome = plots.draw(rows, out / "plots", say)
    if cases:
        outcome.update(worst_case.draw(cases, out / "plots", say))
    write_text_atomic(out / "report.md", report_markdown(jobs, rows, cases, outcome))
