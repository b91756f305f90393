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

from sbr_bench.reporting.aggregate import group
from sbr_bench.reporting.collect import collect
from sbr_bench.reporting.console import show, stderr_printer
from sbr_bench.reporting.judges import judge_names, judges_markdown, use_judge
from sbr_bench.reporting.tables import agreement
from sbr_bench.reporting.write import write_report


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
        write_report(jobs, rows, out, stderr_printer("sbr-bench-report"), args.judge)
    except OSError as err:
        print(f"sbr-bench-report: error: cannot write the report into {out}: {err}", file=sys.stderr)
        return 2
    print(f"sbr-bench-report: report written to {out}: report.md, report.csv, plots/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
