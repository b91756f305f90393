"""Settings: the finished jobs grouped over seeds, each metric summarised, the best cell of each column marked.

A row of the aggregated table is one defense x setting: the jobs that finished ok and share every
override except the replicate keys (``seed``, ``attack.data_seed``). Failed and unfinished jobs
are not averaged in; the report lists them on their own.

Best per column, over the whole table (ties: every tied row): the lowest HS after the attack, the
highest FA, the lowest over-refusal. HS before the attack gets no mark: it measures the aligned
model, which the attack-stage defenses share, so it does not rank the defenses (an alignment-stage
defense's lower HS before is visible in the numbers themselves). A column is marked only when at
least two rows have a value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sbr_bench.reporting.collect import COLUMNS, Job, shared_overrides
from sbr_bench.reporting.stats import Summary, finite, summarize

BEST = {"eval/harmful_score": min, "eval/finetune_acc": max, "eval/over_refusal": min}  # no mark for HS before


@dataclass
class Setting:
    """One row of the aggregated table."""

    defense: str
    key: tuple[str, ...]  # the overrides that fix it (see Job.setting_key)
    jobs: list[Job]
    summaries: dict[str, Summary] = field(default_factory=dict)  # metric key -> summary
    best: set[str] = field(default_factory=set)  # metric keys where this row is best

    @property
    def n(self) -> int:
        return len(self.jobs)

    def param(self, dotted: str) -> float | None:
        """A setting value that all its jobs share (the first job's; they differ only in seeds)."""
        return self.jobs[0].param(dotted)

    def mean(self, metric: str) -> float | None:
        return self.summaries[metric].mean


def group(jobs: list[Job]) -> list[Setting]:
    """The finished jobs grouped by defense and setting, rows in the order of their first job."""
    settings: dict[tuple, Setting] = {}
    for job in jobs:
        if not job.ok:
            continue
        key = job.setting_key()
        row = settings.setdefault((job.defense, key), Setting(job.defense, key, []))
        row.jobs.append(job)
    rows = list(settings.values())
    for row in rows:
        row.summaries = {metric: summarize(j.values.get(metric) for j in row.jobs) for _, metric in COLUMNS}
    mark_best(rows)
    return rows


def mark_best(rows: list[Setting]) -> None:
    """Add each column's best rows to their ``best`` sets."""
    for metric, pick in BEST.items():
        means = [row.mean(metric) for row in rows if finite(row.mean(metric))]
        if len(means) < 2:
            continue
        target = pick(means)
        for row in rows:
            if row.mean(metric) == target:
                row.best.add(metric)


def varying_key(rows: list[Setting]) -> tuple[list[str], list[str]]:
    """(per row: the setting overrides that differ between rows, joined; the overrides all rows share)."""
    if not rows:
        return [], []
    common = shared_overrides([r.key for r in rows]) if len(rows) > 1 else []
    return [" ".join(o for o in r.key if o not in common) for r in rows], common


def aggregates(rows: list[Setting]) -> bool:
    """True when some setting holds more than one job (otherwise the rows repeat the per-job table)."""
    return any(row.n > 1 for row in rows)
