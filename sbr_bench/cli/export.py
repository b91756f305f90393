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
import sys
from pathlib import Path

from sbr_bench.judges.rejudge import find_jobs
from sbr_bench.reporting.export import FORMATS, export_flat, export_job, job_name

PROG = "sbr-bench-export"


def fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


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
