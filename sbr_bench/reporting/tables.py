"""The report's tables: per job (as ``sbr-bench-report`` always printed it), aggregated over seeds, CSV.

Aggregated cells read ``mean ± CI`` (95 %, Student's t over the setting's seeds; the value alone
for one seed). ``(2 of 3)`` after a cell: only 2 of the setting's 3 jobs have the value (NaN or
missing in the others), and the mean and CI are over those 2. The best cell of a column is bold
(see ``aggregate``). All metrics are in percent.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from sbr_bench.reporting.aggregate import Setting, varying_key
from sbr_bench.reporting.collect import COLUMNS, Job, shared_overrides
from sbr_bench.reporting.stats import Summary

CSV_NAMES = {  # metric key -> CSV column stem
    "align/harmful_score": "hs_before",
    "eval/harmful_score": "hs_after",
    "eval/finetune_acc": "fa",
    "eval/over_refusal": "over_refusal",
}
PARTIAL_NOTE = (
    "(k of n): only k of the setting's n jobs have this value (NaN or missing in the others, e.g. FA of a task "
    "without an accuracy); the mean and CI are over those k."
)
CI_NOTE = "mean ± 95% CI half-width over seeds (Student's t, t_{0.975,n-1} * s / sqrt(n)); one seed: the value alone"
BEST_NOTE = "bold: best of its column (lowest HS after, highest FA, lowest over-refusal)"


# ---- per job -------------------------------------------------------------------------------------


def varying(jobs: list[Job]) -> tuple[list[str], str]:
    """Per job: the overrides that differ between jobs; and the ones they all share, joined."""
    split = [j.shown_overrides.split() for j in jobs]
    common = shared_overrides(split) if len(jobs) > 1 else []
    return [" ".join(o for o in s if o not in common) for s in split], " ".join(common)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def jobs_markdown(jobs: list[Job]) -> str:
    """The per-job table as GitHub markdown (overrides shared by every job are said once, above it)."""
    shown, common = varying(jobs)
    header = ["job", "overrides", *(name for name, _ in COLUMNS), "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for job, overrides in zip(jobs, shown, strict=True):
        cells = [job.name, overrides, *(_cell(job.values[k]) for _, k in COLUMNS), job.status]
        lines.append("| " + " | ".join(cells) + " |")
    return (f"all jobs: {common}\n\n" if common else "") + "\n".join(lines)


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200)  # files and pipes: no wrapping


def print_jobs(jobs: list[Job], title: str = "sbr-bench results (percent)") -> None:
    """The per-job table on the terminal."""
    from rich.table import Table
    from rich.text import Text

    shown, common = varying(jobs)
    table = Table(title=title, caption=f"all jobs: {common}" if common else None)
    table.add_column("job")
    table.add_column("overrides", no_wrap=True)
    for name, _ in COLUMNS:
        table.add_column(name, justify="right")
    table.add_column("status")
    for job, overrides in zip(jobs, shown, strict=True):
        cells = [job.name, overrides, *(_cell(job.values[k]) for _, k in COLUMNS), job.status]
        table.add_row(*(Text(c) for c in cells))  # Text: an override like prompts=[a] is not rich markup
    _console().print(table)


# ---- aggregated over seeds -----------------------------------------------------------------------


def summary_cell(summary: Summary) -> str:
    """``12.5 ± 3.1``, ``12.5`` (one value), ``12.5 ± 3.1 (2 of 3)`` (values left out), ``-`` (none)."""
    if summary.mean is None:
        return "-"
    text = f"{summary.mean:.1f}" if summary.ci95 is None else f"{summary.mean:.1f} ± {summary.ci95:.1f}"
    return text + (f" ({summary.n} of {summary.total})" if summary.left_out else "")


def _partial(rows: list[Setting]) -> bool:
    return any(s.left_out for row in rows for s in row.summaries.values())


def settings_markdown(rows: list[Setting]) -> str:
    """The aggregated table as GitHub markdown, best cells bold, with its notes."""
    shown, common = varying_key(rows)
    header = ["defense", "setting", "n", *(name for name, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, setting in zip(rows, shown, strict=True):
        cells = [summary_cell(row.summaries[k]) for _, k in COLUMNS]
        cells = [f"**{c}**" if k in row.best else c for c, (_, k) in zip(cells, COLUMNS, strict=True)]
        lines.append("| " + " | ".join([row.defense, setting or "-", str(row.n), *cells]) + " |")
    notes = [f"all settings: {' '.join(common)}"] if common else []
    notes += [CI_NOTE, BEST_NOTE] + ([PARTIAL_NOTE] if _partial(rows) else [])
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def print_settings(rows: list[Setting], title: str = "mean over seeds (percent)") -> None:
    """The aggregated table on the terminal, best cells bold."""
    from rich.table import Table
    from rich.text import Text

    shown, common = varying_key(rows)
    caption = [f"all settings: {' '.join(common)}"] if common else []
    caption += [CI_NOTE, BEST_NOTE] + ([PARTIAL_NOTE] if _partial(rows) else [])
    table = Table(title=title, caption="\n".join(caption))
    for name in ("defense", "setting", "n"):
        table.add_column(name, no_wrap=name == "setting", justify="right" if name == "n" else "left")
    for name, _ in COLUMNS:
        table.add_column(name, justify="right")
    for row, setting in zip(rows, shown, strict=True):
        cells = [Text(summary_cell(row.summaries[k]), style="bold" if k in row.best else "") for _, k in COLUMNS]
        table.add_row(Text(row.defense), Text(setting or "-"), str(row.n), *cells)
    _console().print(table)


def settings_csv(rows: list[Setting]) -> str:
    """One line per setting: defense, setting, n, then mean / ci95 / n / best per metric; plain numbers.

    Empty cells: no value (mean), fewer than two values (ci95). ``best`` is 1 or 0 (HS before: always 0).
    The varying overrides also get a column each (``attack.poison_ratio``, ``defense.lam``, ...).
    """
    shown, _ = varying_key(rows)
    axes = sorted({o.split("=", 1)[0] for text in shown for o in text.split() if "=" in o})
    header = ["defense", "setting", *axes, "n"]
    for _, key in COLUMNS:
        header += [f"{CSV_NAMES[key]}_{part}" for part in ("mean", "ci95", "n", "best")]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row, setting in zip(rows, shown, strict=True):
        values = dict(o.split("=", 1) for o in setting.split() if "=" in o)
        line = [row.defense, setting, *(_axis_value(row, a, values) for a in axes), row.n]
        for _, key in COLUMNS:
            s = row.summaries[key]
            line += [_number(s.mean), _number(s.ci95), s.n, int(key in row.best)]
        writer.writerow(line)
    return out.getvalue()


def _axis_value(row: Setting, axis: str, given: dict[str, str]) -> str:
    """A swept setting's value in this row: the number in the job's config (also where the row kept the
    default, e.g. SBR's lam beside a lam sweep), else the override as given, else empty (the row has none)."""
    number = row.param(axis)
    return _number(number) if number is not None else given.get(axis, "")


def _number(value: float | None) -> str:
    return "" if value is None else repr(float(value))  # repr: the float round-trips exactly


# ---- what ran ------------------------------------------------------------------------------------

RAN_HEADER = ["job", "n", "harmful", "mixed in", "epochs", "steps", "lr", "batch x GA", "new tokens", "align steps"]
RAN_NOTE = (
    "From each job's settings.json, measured where it happened: n and harmful as drawn, examples a defense "
    "mixed in, epochs and optimizer steps as the Trainer ran them, lr as the optimizer got it, new tokens per "
    "pool (harmful / benign / task), the alignment's optimizer steps (cached: as the reused entry was trained)."
)


def task_answers_markdown(jobs: list[Job]) -> str | None:
    """Per job, where the task answers went after the attack: the share naming each label alone and
    the wrong answers by kind (``sbr_bench.data.tasks.answer_breakdown``); None when no job has them."""
    overrides = dict(zip((j.name for j in jobs), varying(jobs)[0], strict=True))  # as the per-job table
    shown = [j for j in jobs if j.ok and j.task_answers]
    if not shown:
        return None
    keys = list(dict.fromkeys(k for j in shown for k in j.task_answers))
    header = ["job", "overrides", "FA", *(k.replace("/", " ") for k in keys)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for job in shown:
        cells = [job.name, overrides[job.name] or "-", _plain(job.values.get("eval/finetune_acc"))]
        cells += [_plain(job.task_answers.get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "- percent of the task's test prompts; `named`: answers naming that label and no other; `wrong`: the wrong "
        "answers by kind (another label alone, several labels, no label, the gold label alone but wrong by the "
        "task's further rule, e.g. a refusal keyword under strict SST-2); the wrong kinds sum to 100 - FA"
    )
    return "\n".join(lines) + "\n\n" + note


def ran_markdown(jobs: list[Job]) -> str:
    """What each finished job actually ran, as a markdown table (jobs without settings.json left out)."""
    lines = ["| " + " | ".join(RAN_HEADER) + " |", "|" + "---|" * len(RAN_HEADER)]
    shown = 0
    for job in jobs:
        ran = job.ran or {}
        attack, align, pools = ran.get("attack"), ran.get("align"), (ran.get("eval") or {}).get("pools", {})
        if not attack:
            continue
        tokens = "/".join(_plain((pools.get(p) or {}).get("max_new_tokens")) for p in ("harmful", "benign", "task"))
        steps = (
            "-"
            if align is None
            else _plain(align.get("optimizer_steps")) + (" (cached)" if align.get("cached") else "")
        )
        cells = [
            job.name,
            _plain(attack.get("num_samples")),
            _plain(attack.get("num_harmful")),
            _plain(attack.get("mixed_in")),
            _plain(attack.get("epochs")),
            _plain(attack.get("optimizer_steps")),
            _plain(attack.get("lr")),
            f"{_plain(attack.get('batch_size'))} x {_plain(attack.get('grad_accum'))}",
            tokens,
            steps,
        ]
        lines.append("| " + " | ".join(cells) + " |")
        shown += 1
    if not shown:
        return "No job recorded what it ran (settings.json)."
    return "\n".join(lines) + f"\n\n- {RAN_NOTE}"


def _plain(value) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


# ---- jobs that did not finish, judge agreement ---------------------------------------------------


def failed_markdown(jobs: list[Job]) -> str:
    """The jobs that did not finish, each with the error line of its status.json."""
    failed = [j for j in jobs if not j.ok]
    if not failed:
        return "Every job finished."
    lines = [f"{len(failed)} of {len(jobs)} jobs did not finish:", ""]
    lines += [f"- job {j.name} ({j.path}): {j.shown_overrides or '-'}: {j.status}" for j in failed]
    return "\n".join(lines)


def agreement(jobs: list[Job]) -> str:
    """Judge agreement (Cohen's kappa per judge pair, from ``sbr-bench-judge``) as a markdown table."""
    pairs = sorted({pair for j in jobs for pair in j.kappas})
    lines = ["Judge agreement (Cohen's kappa on the harmful answers)", ""]
    lines += ["| job | " + " | ".join(pairs) + " |", "|" + "---|" * (len(pairs) + 1)]
    for j in jobs:
        if j.kappas:
            cells = ["-" if j.kappas.get(p) is None else f"{j.kappas[p]:.2f}" for p in pairs]
            lines.append(f"| {Path(j.path).name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
