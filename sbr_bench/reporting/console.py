"""What a report prints: the tables on stdout, notes and errors on stderr (``sbr-bench-report`` and
the end of every sweep)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from sbr_bench.reporting.aggregate import Setting, aggregates
from sbr_bench.reporting.collect import Job
from sbr_bench.reporting.tables import jobs_markdown, print_jobs, print_settings, settings_markdown
from sbr_bench.reporting.worst_case import FA, print_worst_cases, worst_case_markdown, worst_cases


def show(jobs: list[Job], rows: list[Setting], fmt: str = "table", title: str = "sbr-bench results (percent)") -> None:
    """The per-job table, then the aggregated one when some setting pools several seeds, then the
    worst case of a search or grid (``reporting.worst_case``).

    With one job per setting the aggregated rows would repeat the per-job rows, so they stay in
    report.md and report.csv only (and stdout stays the per-job table that scripts read).
    """
    cases = worst_cases(jobs)
    if fmt == "markdown":
        print(jobs_markdown(jobs))
        if aggregates(rows):
            print("\nMean over seeds (percent)\n\n" + settings_markdown(rows))
        if cases:
            print("\nWorst case under the utility floor (percent)\n\n" + worst_case_markdown(cases))
    else:
        print_jobs(jobs, title=title)
        if aggregates(rows):
            print_settings(rows)
        if cases:
            print_worst_cases(cases)


def say_reference(cases: list) -> None:
    """After an undefended worst-case search or grid: the reference FA that the defenses' searches need."""
    for row in cases:
        default = row.default
        if row.defense == "none" and default is not None and default.ok and default.values.get(FA) is not None:
            print(
                f"sbr-bench: the undefended default attack (job {default.name}) reached FA {default.values[FA]:g}; "
                f"search a defense against the same floor with search.reference_fa={default.values[FA]:g}",
                file=sys.stderr,
            )


def stderr_printer(prog: str) -> Callable[[str], None]:
    """A function that prints one line to stderr under the command's name (``prog: line``)."""
    return lambda line: print(f"{prog}: {line}", file=sys.stderr)
