"""``sbr-bench-report``: the comparison table of one or more sweep folders, read from job folders only.

    sbr-bench-report multirun/quickstart/2026-11-27_10-00-00
    sbr-bench-report multirun/quickstart/*/ --format markdown

A job folder is any folder holding ``.hydra/overrides.yaml``; its row shows the overrides that
name the job, the harmful score (HS) before and after the attack, fine-tune accuracy (FA) and
over-refusal, all in percent, and the job's status. Results never depend on W&B being reachable.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback

COLUMNS = (
    ("HS before", "align/harmful_score"),
    ("HS after", "eval/harmful_score"),
    ("FA", "eval/finetune_acc"),
    ("over-refusal", "eval/over_refusal"),
)
KAPPA = "judge/kappa/"  # agreement between judges, written by sbr-bench-judge


@dataclass
class Row:
    """One job of a sweep."""

    job: str
    overrides: str
    values: dict[str, float | None]
    status: str
    kappas: dict[str, float] = field(default_factory=dict)  # judge/kappa/<a>~<b>, from sbr-bench-judge


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def collect(folders: list[Path]) -> list[Row]:
    """Rows for every job folder under ``folders``, in job order."""
    rows = []
    for folder in folders:
        jobs = sorted(
            (p.parent.parent for p in folder.rglob(".hydra/overrides.yaml")),
            key=lambda p: [int(s) if s.isdigit() else s for s in p.relative_to(folder).parts],
        )
        for job in jobs:
            overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
            shown = " ".join(o for o in overrides if not o.startswith(("experiment=", "hydra.", "resume=")))
            metrics = _read_json(job / "metrics.json") or {}
            status = _read_json(job / "status.json") or {}
            state = status.get("status", "missing")
            if state == "error":
                state = f"error: {status.get('error', '')}"
            kappas = {k[len(KAPPA) :]: v for k, v in metrics.items() if k.startswith(KAPPA)}
            rows.append(Row(str(job), shown, {key: metrics.get(key) for _, key in COLUMNS}, state, kappas))
    return rows


def varying(rows: list[Row]) -> tuple[list[Row], str]:
    """Rows showing only the overrides that differ between jobs, and the ones they all share."""
    split = [r.overrides.split() for r in rows]
    common = [o for o in split[0] if all(o in s for s in split[1:])] if len(rows) > 1 else []
    shown = [
        Row(r.job, " ".join(o for o in s if o not in common), r.values, r.status)
        for r, s in zip(rows, split, strict=True)
    ]
    return shown, " ".join(common)


def agreement(rows: list[Row]) -> str:
    """Judge agreement (Cohen's kappa per judge pair, from ``sbr-bench-judge``) as a markdown table."""
    pairs = sorted({pair for r in rows for pair in r.kappas})
    lines = ["Judge agreement (Cohen's kappa on the harmful answers)", ""]
    lines += ["| job | " + " | ".join(pairs) + " |", "|" + "---|" * (len(pairs) + 1)]
    for r in rows:
        if r.kappas:
            cells = ["-" if r.kappas.get(p) is None else f"{r.kappas[p]:.2f}" for p in pairs]
            lines.append(f"| {Path(r.job).name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(rows: list[Row]) -> str:
    """The table as GitHub markdown (overrides shared by every job are said once, above it)."""
    rows, common = varying(rows)
    header = ["job", "overrides", *(name for name, _ in COLUMNS), "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [Path(r.job).name, r.overrides, *(_cell(r.values[k]) for _, k in COLUMNS), r.status]
        lines.append("| " + " | ".join(cells) + " |")
    return (f"all jobs: {common}\n\n" if common else "") + "\n".join(lines)


def print_table(rows: list[Row], title: str = "sbr-bench results (percent)") -> None:
    """The table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    rows, common = varying(rows)
    table = Table(title=title, caption=f"all jobs: {common}" if common else None)
    table.add_column("job")
    table.add_column("overrides", no_wrap=True)
    for name, _ in COLUMNS:
        table.add_column(name, justify="right")
    table.add_column("status")
    for r in rows:
        table.add_row(Path(r.job).name, r.overrides, *(_cell(r.values[k]) for _, k in COLUMNS), r.status)
    Console(width=None if sys.stdout.isatty() else 200).print(table)  # files and pipes: no wrapping


class ReportCallback(Callback):
    """Hydra callback: print the table of the sweep when the multirun ends; exit 1 if a job did not finish.

    A failed job does not stop the sweep (see ``sbr_bench.job``); this is where the user hears of it.
    """

    def on_multirun_end(self, config, **kwargs) -> None:
        folder = Path(config.hydra.sweep.dir)
        rows = collect([folder])
        print_table(rows, title=f"sbr-bench results (percent): {folder}")
        (folder / "report.md").write_text(markdown(rows) + "\n")
        failed = [r for r in rows if r.status != "ok"]
        if failed:
            names = ", ".join(Path(r.job).name for r in failed)
            print(
                f"sbr-bench: error: {len(failed)} of {len(rows)} jobs did not finish (job {names}); their status.json "
                f"says why; after a fix, re-run the command with resume=true hydra.sweep.dir={folder}",
                file=sys.stderr,
            )
            raise SystemExit(1)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sbr-bench-report``."""
    parser = argparse.ArgumentParser(prog="sbr-bench-report", description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="sweep (multirun) or job folders")
    parser.add_argument("--format", choices=("table", "markdown"), default="table")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        print(f"sbr-bench-report: error: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    rows = collect(args.folders)
    if not rows:
        print(
            f"sbr-bench-report: error: no job folders (with .hydra/overrides.yaml) under {args.folders[0]}",
            file=sys.stderr,
        )
        return 2
    if args.format == "markdown":
        print(markdown(rows))
    else:
        print_table(rows)
    if any(r.kappas for r in rows):
        print("\n" + agreement(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
