"""Every judge's harmful score side by side, per setting, with the judges' agreement.

A job is scored by its own judge (``judge=`` when it ran) and by each ``sbr-bench-judge``
re-judgement (``<key>@<name>`` in its ``metrics.json``). Judges disagree, and papers use different
ones, so the report can show any judge's HS in all its tables and plots (``use_judge``: what
``sbr-bench-report --judge NAME`` does) and, whenever two or more judges scored the jobs, one table
with every judge's HS before and after the attack (mean ± 95 % CI over seeds, as the main table)
and the mean Cohen's kappa of each judge pair over the setting's jobs (``judge/kappa/<a>~<b>``,
each job's kappa on its own harmful answers of both stages).
"""

from __future__ import annotations

import csv
import io

from sbr_bench.reporting.aggregate import Setting, varying_key
from sbr_bench.reporting.collect import HS_KEYS, Job
from sbr_bench.reporting.stats import summarize
from sbr_bench.reporting.tables import CI_NOTE, _number, summary_cell

STAGES = {"align/harmful_score": "HS before", "eval/harmful_score": "HS after"}
CSV_STAGES = {"align/harmful_score": "hs_before", "eval/harmful_score": "hs_after"}
KAPPA_NOTE = (
    "kappa: Cohen's kappa of two judges on the same harmful answers (both stages, missing verdicts left out), "
    "mean ± 95% CI over the setting's jobs"
)


def judge_names(jobs: list[Job]) -> list[str]:
    """The judges that scored any job: the jobs' own judges first (in job order), then the others sorted."""
    own = list(dict.fromkeys(j.own_judge for j in jobs if j.judged))
    others = sorted({name for j in jobs for name in j.judged} - set(own))
    return own + others


def use_judge(jobs: list[Job], name: str) -> None:
    """Put judge ``name``'s HS into every job's HS columns (None where it did not score a job).

    Raises ValueError, naming the judges there are, when no job was scored by ``name``.
    """
    if not any(name in j.judged for j in jobs):
        found = ", ".join(judge_names(jobs)) or "none"
        raise ValueError(
            f"no job was scored by a judge named {name} (judges found: {found}); "
            f"score them first: sbr-bench-judge <folders> judge=<option> judge.name={name}"
        )
    for job in jobs:
        scores = job.judged.get(name, {})
        job.values.update({key: scores.get(key) for key in HS_KEYS})


def pairs(rows: list[Setting]) -> list[str]:
    return sorted({pair for row in rows for job in row.jobs for pair in job.kappas})


def judges_markdown(rows: list[Setting], judges: list[str]) -> str:
    """One line per setting: each judge's HS before and after (mean ± CI), then each pair's kappa."""
    shown, common = varying_key(rows)
    kappa_pairs = pairs(rows)
    header = ["defense", "setting", "n"]
    header += [f"{STAGES[key]} ({judge})" for judge in judges for key in HS_KEYS]
    header += [f"kappa {pair}" for pair in kappa_pairs]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, setting in zip(rows, shown, strict=True):
        cells = [row.defense, setting or "-", str(row.n)]
        cells += [summary_cell(hs_summary(row, judge, key)) for judge in judges for key in HS_KEYS]
        cells += [_kappa_cell(row, pair) for pair in kappa_pairs]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"all settings: {' '.join(common)}"] if common else []
    notes += [CI_NOTE, KAPPA_NOTE, "-: the judge did not score this setting's jobs"]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def judges_csv(rows: list[Setting], judges: list[str]) -> str:
    """One line per setting x judge: ``defense, setting, judge, n``, HS before / after (mean, ci95, n)."""
    shown, _ = varying_key(rows)
    header = ["defense", "setting", "judge", "n"]
    header += [f"{CSV_STAGES[key]}_{part}" for key in HS_KEYS for part in ("mean", "ci95", "n")]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row, setting in zip(rows, shown, strict=True):
        for judge in judges:
            line = [row.defense, setting, judge, row.n]
            for key in HS_KEYS:
                s = hs_summary(row, judge, key)
                line += [_number(s.mean), _number(s.ci95), s.n]
            writer.writerow(line)
    return out.getvalue()


def hs_summary(row: Setting, judge: str, key: str):
    return summarize(job.judged.get(judge, {}).get(key) for job in row.jobs)


def _kappa_cell(row: Setting, pair: str) -> str:
    summary = summarize(job.kappas.get(pair) for job in row.jobs)
    if summary.mean is None:
        return "-"
    text = f"{summary.mean:.2f}" if summary.ci95 is None else f"{summary.mean:.2f} ± {summary.ci95:.2f}"
    return text + (f" ({summary.n} of {summary.total})" if summary.left_out else "")
