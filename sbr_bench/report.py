"""``sbr-bench-report``: the report of one or more sweep folders, read from job folders only.

    sbr-bench-report multirun/quickstart/2026-11-27_10-00-00
    sbr-bench-report multirun/quickstart/*/ --format markdown --out report/
    sbr-bench-report multirun/quickstart/2026-11-27_10-00-00 --judge beaverdam

A job folder is any folder holding ``.hydra/overrides.yaml``; its row shows the overrides that
name the job, the harmful score (HS) before and after the attack, fine-tune accuracy (FA) and
over-refusal, all in percent, and the job's status. HS is the job's own judge's, or with
``--judge NAME`` that of a judge that ``sbr-bench-judge`` added; with two or more judges a table
puts every judge's HS side by side with their agreement (``reporting.judges``). Jobs that differ
only in their seeds are then pooled into one row per defense x setting: mean ± 95 % CI (Student's t), best cells marked.
Written to the output folder (the folder given, or ./report for several): report.md, report.csv,
plots/*.png. Results never depend on W&B being reachable. The work is done in ``sbr_bench.reporting``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

from sbr_bench import runtime
from sbr_bench.reporting.aggregate import Setting, aggregates, group
from sbr_bench.reporting.collect import COLUMNS, Job, collect
from sbr_bench.reporting.judges import judge_names, judges_markdown, use_judge
from sbr_bench.reporting.tables import agreement, jobs_markdown, print_jobs, print_settings, settings_markdown
from sbr_bench.reporting.worst_case import FA, print_worst_cases, worst_case_markdown, worst_cases
from sbr_bench.reporting.write import write_report
from sbr_bench.wandb_run import log_worst_cases

__all__ = ["COLUMNS", "Job", "ReportCallback", "agreement", "collect", "main", "markdown", "print_table"]
markdown = jobs_markdown  # the per-job table, under its earlier names
print_table = print_jobs


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


def _say(prog: str):
    return lambda line: print(f"{prog}: {line}", file=sys.stderr)


class ReportCallback(Callback):
    """Hydra callback of every sweep: before its first job, record its axes (``sweep.json``); when it
    ends, print its tables and write report.md, report.csv and plots/ into the sweep folder; exit 1
    if a job did not finish.

    A failed job does not stop the sweep (see ``sbr_bench.job``); this is where the user hears of it.
    """

    def on_multirun_start(self, config, **kwargs) -> None:
        """Record the sweep's axes (``sweep.json``) before the first job: its W&B run name needs them."""
        runtime.record_sweep(config)

    def on_multirun_end(self, config, **kwargs) -> None:
        folder = Path(config.hydra.sweep.dir)
        jobs = collect([folder])
        rows = group(jobs)
        show(jobs, rows, title=f"sbr-bench results (percent): {folder}")
        write_report(jobs, rows, folder, _say("sbr-bench"))
        print(f"sbr-bench: report written to {folder}: report.md, report.csv, plots/", file=sys.stderr)
        cases = worst_cases(jobs)
        if cases:
            say_reference(cases)
            log_worst_cases(config.get("logger"), cases, folder)
        failed = [j for j in jobs if not j.ok]
        if failed:
            names = ", ".join(j.name for j in failed)
            print(
                f"sbr-bench: error: {len(failed)} of {len(jobs)} jobs did not finish (job {names}); their status.json "
                f"says why; after a fix, re-run the command with resume=true hydra.sweep.dir={folder}",
                file=sys.stderr,
            )
            raise SystemExit(1)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sbr-bench-report``."""
    parser = argparse.ArgumentParser(prog="sbr-bench-report", description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="sweep (multirun) or job folders")
    parser.add_argument("--format", choices=("table", "markdown"), default="table")
    parser.add_argument(
        "--judge",
        metavar="NAME",
        help="the judge whose HS fills the tables, intervals and plots: a name from sbr-bench-judge "
        "(judgements/<NAME>.jsonl, metrics <key>@<NAME>) or a job's own judge (default: each job's own)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for report.md, report.csv and plots/ (default: the folder given; ./report for several)",
    )
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        print(f"sbr-bench-report: error: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    out = args.out or (args.folders[0] if len(args.folders) == 1 else Path("report"))
    if out.exists() and not out.is_dir():
        print(f"sbr-bench-report: error: --out {out} is a file; give a folder", file=sys.stderr)
        return 2
    jobs = collect(args.folders)
    if not jobs:
        print(
            f"sbr-bench-report: error: no job folders (with .hydra/overrides.yaml) under {args.folders[0]}",
            file=sys.stderr,
        )
        return 2
    if args.judge is not None:
        try:
            use_judge(jobs, args.judge)
        except ValueError as err:
            print(f"sbr-bench-report: error: {err}", file=sys.stderr)
            return 2
    rows = group(jobs)
    title = "sbr-bench results (percent)" + (f", HS judged by {args.judge}" if args.judge else "")
    show(jobs, rows, args.format, title)
    names = judge_names(jobs)
    if len(names) > 1 and rows:
        print("\nHarmful score by judge (percent)\n\n" + judges_markdown(rows, names))
    if any(j.kappas for j in jobs):
        print("\n" + agreement(jobs))
    try:
        write_report(jobs, rows, out, _say("sbr-bench-report"), args.judge)
    except OSError as err:
        print(f"sbr-bench-report: error: cannot write the report into {out}: {err}", file=sys.stderr)
        return 2
    print(f"sbr-bench-report: report written to {out}: report.md, report.csv, plots/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
