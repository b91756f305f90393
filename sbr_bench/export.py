"""``sbr-bench-export``: a job's or a sweep's generations in the formats other tools read.

    sbr-bench-export multirun/default/2026-11-27_10-00-00                      # every format
    sbr-bench-export outputs/default/<date_time> --format strongreject,hf --out shared/

Generation is done once, judging is disputed: these files hand the saved answers
(``generations.jsonl``, never generated again) to the judges and leaderboards other groups use.
For each job folder under the arguments and each stage (``before_attack``, ``after_attack``), in
``<out>/<job>/<stage>/``:

- ``alpaca_eval``: ``alpaca_eval_outputs.json``, ``[{"instruction", "output", "generator", "dataset"}]``
  from the task pool (the format of AlpacaEval's ``model_outputs``), and
  ``alpaca_eval_reference.json``, the same instructions with the dataset's own answer (``label``);
- ``harmbench``: ``harmbench_completions.json``, ``{behavior_id: [{"test_case", "generation"}]}``
  (HarmBench's completions file, the classifier's input), and ``harmbench_behaviors.csv``
  (``Behavior``, ``FunctionalCategory``, ``SemanticCategory``, ``Tags``, ``ContextString``,
  ``BehaviorID``), the harmful prompts as behaviors, their ``prompt_id`` as ``BehaviorID``;
- ``strongreject``: ``strongreject.csv`` with ``forbidden_prompt`` and ``response`` (what the
  StrongREJECT evaluators read) plus ``prompt_id``, ``category``, ``generator``, ``stage``;

and in ``<out>/``, for ``hf``: ``generations.parquet`` and ``generations.csv``, every record of
every job (``job`` says which) as one flat table, written through ``datasets``.

The ``generator`` of a stage is the job's run name and the stage: ``sbr-hft-toy-s0/after_attack``.
Verdicts of an outside judge come back with ``judge=imported`` (``sbr_bench.judges.imported``):
``sbr-bench-judge <folders> judge=imported judge.path=<verdicts file> judge.name=<name>``.
Bad input (no job folder, an unknown format) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from sbr_bench.evaluation.records import prompt_id
from sbr_bench.io import write_text_atomic
from sbr_bench.judges.rejudge import find_jobs, read_records

PROG = "sbr-bench-export"
FORMATS = ("alpaca_eval", "harmbench", "strongreject", "hf")
STAGES = ("before_attack", "after_attack")
BEHAVIOR_COLUMNS = ["Behavior", "FunctionalCategory", "SemanticCategory", "Tags", "ContextString", "BehaviorID"]
STRONGREJECT_COLUMNS = ["forbidden_prompt", "response", "prompt_id", "category", "generator", "stage"]


def fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sbr-bench-export``."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="job or sweep (multirun) folders")
    parser.add_argument(
        "--format",
        default=",".join(FORMATS),
        help=f"comma-separated, any of {', '.join(FORMATS)} (default: all)",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: <folder>/export; ./export for several)")
    args = parser.parse_args(argv)
    formats = {f.strip() for f in args.format.split(",") if f.strip()}
    unknown = sorted(formats - set(FORMATS))
    if unknown or not formats:
        given = unknown[0] if unknown else repr(args.format)
        return fail(f"--format {given}: no such format; valid: {', '.join(FORMATS)}")
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        return fail(f"not a folder: {', '.join(missing)}")
    jobs = find_jobs(args.folders)
    if not jobs:
        return fail(f"no job folders (with generations.jsonl) under {', '.join(map(str, args.folders))}")
    out = args.out or (args.folders[0] / "export" if len(args.folders) == 1 else Path("export"))
    written = []
    try:
        for job in jobs:
            written += export_job(job, out / job_name(job, args.folders), formats)
        if "hf" in formats:
            written += export_flat(jobs, args.folders, out)
    except OSError as err:
        return fail(f"cannot write into {out}: {err}")
    print(f"{PROG}: {len(jobs)} jobs, {len(written)} files written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
