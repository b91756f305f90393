"""Score the saved generations of a finished job with another judge (the work of ``sbr-bench-judge``,
whose command line is ``sbr_bench.cli.judge``).

For a job folder, ``rejudge_job`` scores the harmful-pool answers of both stages and writes
``judgements/<judge name>.jsonl`` and the new ``...@<name>`` metrics into ``metrics.json``, with
Cohen's kappa between every pair of judges that scored the job (``judge_labels``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sbr_bench.io import read_json, write_json_atomic, write_jsonl_atomic
from sbr_bench.judges.agreement import pairwise_kappa
from sbr_bench.judges.base import harmful_metrics, judge_name, run_judge, verdict_fields

log = logging.getLogger(__name__)

STAGE_PREFIX = {"before_attack": "align", "after_attack": "eval"}  # the prefixes of metrics.json


def find_jobs(folders: list[Path]) -> list[Path]:
    """Job folders (holding generations.jsonl) under each argument, in job order."""
    jobs = set()
    for folder in folders:
        jobs.update(p.parent for p in folder.rglob("generations.jsonl") if p.parent.name != "judgements")
    return sorted(jobs, key=lambda p: [int(s) if s.isdigit() else s for s in p.parts])


def read_records(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def own_judge_name(job: Path) -> str:
    """The name of the judge that scored the job itself (its config's ``judge.name``, else its option)."""
    from sbr_bench.reporting.collect import read_job

    return read_job(job).own_judge


def rejudge_job(job: Path, judge) -> dict[str, float]:
    """Score one job's harmful answers; write its judgements and the new metrics. Returns those metrics."""
    name = judge_name(judge)
    harmful = [r for r in read_records(job / "generations.jsonl") if r.get("pool") == "harmful"]
    verdicts = run_judge(judge, [r["prompt"] for r in harmful], [r["response"] for r in harmful])
    judged = [
        {"stage": r["stage"], "prompt": r["prompt"], "response": r["response"], **verdict_fields(v)}
        for r, v in zip(harmful, verdicts, strict=True)
    ]
    write_jsonl_atomic(job / "judgements" / f"{name}.jsonl", judged)

    new: dict[str, float] = {}
    for stage, prefix in STAGE_PREFIX.items():
        stage_verdicts = [v for r, v in zip(harmful, verdicts, strict=True) if r["stage"] == stage]
        if stage_verdicts:
            new.update({f"{prefix}/{k}@{name}": v for k, v in harmful_metrics(judge, stage_verdicts).items()})
    new.update({f"judge/kappa/{pair}": k for pair, k in pairwise_kappa(judge_labels(job, harmful)).items()})
    metrics_path = job / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.is_file() else {}
    write_json_atomic(metrics_path, dict(sorted({**metrics, **new}.items())))
    return new


def judge_labels(job: Path, harmful: list[dict]) -> dict[str, list[bool | None]]:
    """Every judge's labels of this job's harmful answers, in the order of generations.jsonl.

    A judgements file made from other generations (a job that was re-run since) is left out.
    """
    labels = {own_judge_name(job): [r.get("harmful") for r in harmful]}
    key = [(r["stage"], r["prompt"], r["response"]) for r in harmful]
    for path in sorted((job / "judgements").glob("*.jsonl")):
        records = read_records(path)
        if [(r["stage"], r["prompt"], r["response"]) for r in records] != key:
            log.warning("%s: judged other generations than generations.jsonl; left out of the agreement", path)
            continue
        labels[path.stem] = [r.get("harmful") for r in records]
    return labels
