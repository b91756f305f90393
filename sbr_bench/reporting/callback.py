"""The Hydra callback of every sweep: the sweep's axes before its first job, its report after the last."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.experimental.callback import Callback

from sbr_bench import runtime
from sbr_bench.reporting.aggregate import group
from sbr_bench.reporting.collect import collect
from sbr_bench.reporting.console import say_reference, show, stderr_printer
from sbr_bench.reporting.worst_case import worst_cases
from sbr_bench.reporting.write import write_report
from sbr_bench.wandb_run import log_worst_cases


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
        write_report(jobs, rows, folder, stderr_printer("sbr-bench"))
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
