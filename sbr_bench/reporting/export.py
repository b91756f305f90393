"""Saved answers (``generations.jsonl``) in the formats of other judges and leaderboards: AlpacaEval,
HarmBench, StrongREJECT and one flat table (parquet, CSV). The command is ``sbr-bench-export``
(``sbr_bench.cli.export``), whose help lists each format's files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from sbr_bench.evaluation.records import prompt_id
from sbr_bench.io import write_text_atomic
from sbr_bench.judges.rejudge import read_records

FORMATS = ("alpaca_eval", "harmbench", "strongreject", "hf")
STAGES = ("before_attack", "after_attack")
BEHAVIOR_COLUMNS = ["Behavior", "FunctionalCategory", "SemanticCategory", "Tags", "ContextString", "BehaviorID"]
STRONGREJECT_COLUMNS = ["forbidden_prompt", "response", "prompt_id", "category", "generator", "stage"]


def generator_of(records: list[dict], job: Path, stage: str) -> str:
    """The stage's name for leaderboards: the job's run name (or its folder) and the stage."""
    named = next((r["generator"] for r in records if r.get("generator")), None)
    return f"{named or job.name}/{stage}"


def alpaca_eval(records: list[dict], generator: str) -> tuple[list[dict], list[dict]]:
    """(model outputs, reference outputs) of the task pool, in AlpacaEval's record layout."""
    task = [r for r in records if r["pool"] == "task"]
    outputs = [
        {"instruction": r["prompt"], "output": r["response"], "generator": generator, "dataset": "sbr-bench"}
        for r in task
    ]
    reference = [
        {"instruction": r["prompt"], "output": r.get("label", ""), "generator": "reference", "dataset": "sbr-bench"}
        for r in task
    ]
    return outputs, reference


def harmbench(records: list[dict]) -> tuple[dict[str, list[dict]], str]:
    """(completions keyed by behavior id, behaviors CSV) of the harmful pool."""
    completions: dict[str, list[dict]] = {}
    behaviors: dict[str, dict] = {}
    for r in records:
        if r["pool"] != "harmful":
            continue
        behavior = r.get("prompt_id") or prompt_id(r["prompt"])
        completions.setdefault(behavior, []).append({"test_case": r["prompt"], "generation": r["response"]})
        behaviors[behavior] = {
            "Behavior": r["prompt"],
            "FunctionalCategory": "standard",  # a plain request: no context string, no copyright test
            "SemanticCategory": r.get("category", ""),
            "Tags": "",
            "ContextString": "",
            "BehaviorID": behavior,
        }
    return completions, table(BEHAVIOR_COLUMNS, behaviors.values())


def strongreject(records: list[dict], stage: str) -> str:
    """The harmful pool as StrongREJECT's table: ``forbidden_prompt``, ``response`` and the record's ids."""
    rows = [
        {
            "forbidden_prompt": r["prompt"],
            "response": r["response"],
            "prompt_id": r.get("prompt_id") or prompt_id(r["prompt"]),
            "category": r.get("category", ""),
            "generator": r.get("generator", ""),
            "stage": stage,
        }
        for r in records
        if r["pool"] == "harmful"
    ]
    return table(STRONGREJECT_COLUMNS, rows)


def table(columns: list[str], rows) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def flat_rows(jobs: list[Path], root: list[Path]) -> list[dict]:
    """Every record of every job, flat: nested fields (the judge's details) as JSON text, ``job`` first."""
    rows = []
    for job in jobs:
        name = job_name(job, root)
        for record in read_records(job / "generations.jsonl"):
            row = {"job": name}
            for key, value in record.items():
                row[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
            rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return [{c: row.get(c) for c in columns} for row in rows]  # one schema for every row


def job_name(job: Path, folders: list[Path]) -> str:
    """The job's path below the folder given (``3`` in a sweep), or the folder's own name for a job folder."""
    for folder in folders:
        if job == folder:
            return job.name
        if folder in job.parents:
            return str(job.relative_to(folder))
    return job.name


def export_job(job: Path, out: Path, formats: set[str]) -> list[Path]:
    """Write the per-stage files of one job under ``out``; returns the files written."""
    written = []
    records = read_records(job / "generations.jsonl")
    for stage in STAGES:
        stage_records = [r for r in records if r.get("stage") == stage]
        if not stage_records:
            continue
        folder = out / stage
        generator = generator_of(stage_records, job, stage)
        files: dict[str, str] = {}
        if "alpaca_eval" in formats:
            outputs, reference = alpaca_eval(stage_records, generator)
            files["alpaca_eval_outputs.json"] = json.dumps(outputs, indent=1, ensure_ascii=False)
            files["alpaca_eval_reference.json"] = json.dumps(reference, indent=1, ensure_ascii=False)
        if "harmbench" in formats:
            completions, behaviors = harmbench(stage_records)
            files["harmbench_completions.json"] = json.dumps(completions, indent=1, ensure_ascii=False)
            files["harmbench_behaviors.csv"] = behaviors
        if "strongreject" in formats:
            files["strongreject.csv"] = strongreject(stage_records, stage)
        for name, text in files.items():
            write_text_atomic(folder / name, text + ("" if text.endswith("\n") else "\n"))
            written.append(folder / name)
    return written


def export_flat(jobs: list[Path], folders: list[Path], out: Path) -> list[Path]:
    """``hf``: every record as one table, Parquet and CSV, through ``datasets``."""
    from datasets import Dataset

    dataset = Dataset.from_list(flat_rows(jobs, folders))
    out.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(out / "generations.parquet"))
    dataset.to_csv(str(out / "generations.csv"), index=False)
    return [out / "generations.parquet", out / "generations.csv"]
