"""Wall time of ``make quickstart`` (``sbr-bench -m experiment=quickstart``) on a fresh cache, and of each stage.

    python benchmarks/quickstart_time.py                       # one round, fresh cache, the preset as it is
    python benchmarks/quickstart_time.py --rounds 2 -- seeds=three

Each round runs the quickstart as a user does, in its own temporary folder with an empty cache
(``SBR_BENCH_CACHE``), so the GGUF conversion, the alignment and every evaluation are in the time.
Arguments after ``--`` go to ``sbr-bench`` (e.g. another seeds axis). The figures:

- wall time of the whole command, min / median / max over the rounds (goal: <= 15 min on 2 cores);
- per stage (``time/*_s`` of every job's metrics.json: the alignment, the attack, the evaluation
  after it, the attack's diagnostics), min / median / max over the jobs of all rounds; the first
  job also pays the conversion, the self-distilled targets and the evaluation before the attack,
  which are cached for the others (``first job, other``);
- the results table (mean +- 95 % interval over the seeds) as the sweep's report printed it.

Nothing else should run on the machine meanwhile: on 2 cores a second job makes both 3-5x slower.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_range, write_record

GOAL_S = 15 * 60
STAGES = ("align_s", "attack_s", "diagnostics_s", "eval_s", "total_s")


def mean_table(report: Path) -> list[str]:
    """The report's "Mean over seeds" table (markdown lines)."""
    lines = report.read_text(encoding="utf-8").splitlines()
    table = []
    for line in lines[lines.index("## Mean over seeds") + 1 :]:
        if line.startswith("|"):
            table.append(line)
        elif table:  # the first line after the table
            break
    return table


def run_round(extra: list[str], keep: Path | None) -> dict:
    """One quickstart on an empty cache: wall seconds, the jobs' stage times, the report's table."""
    folder = Path(tempfile.mkdtemp(prefix="sbr-bench-quickstart-", dir=keep))
    env = {**os.environ, "SBR_BENCH_CACHE": str(folder / "cache"), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    sweep = folder / "sweep"
    command = [sys.executable, "-m", "sbr_bench.cli.run", "-m", "experiment=quickstart", f"hydra.sweep.dir={sweep}"]
    start = time.perf_counter()
    result = subprocess.run([*command, *extra], cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"quickstart_time: the quickstart failed ({result.returncode}):\n{result.stderr[-3000:]}")
    jobs = []
    for metrics_path in sorted(sweep.glob("*/metrics.json"), key=lambda p: int(p.parent.name)):
        metrics = json.loads(metrics_path.read_text())
        jobs.append({"job": int(metrics_path.parent.name), **{s: metrics.get(f"time/{s}", 0.0) for s in STAGES}})
    table = mean_table(sweep / "report.md")
    return {"folder": str(folder), "wall_s": wall, "jobs": jobs, "table": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="fresh-cache runs of the whole quickstart")
    parser.add_argument("--keep", type=Path, default=None, help="folder for the runs (default: the system's temp)")
    parser.add_argument("extra", nargs="*", help="sbr-bench overrides, after --")
    args = parser.parse_args()

    rounds = []
    for n in range(args.rounds):
        rounds.append(run_round(args.extra, args.keep))
        print(f"round {n + 1}/{args.rounds}: {rounds[-1]['wall_s'] / 60:.1f} min ({rounds[-1]['folder']})", flush=True)

    walls = [r["wall_s"] for r in rounds]
    first = [r["jobs"][0] for r in rounds]
    others = [j for r in rounds for j in r["jobs"][1:]]
    print("\n| stage | first job (s) | other jobs (s), median [min, max] |")
    print("|---|---|---|")
    for stage in STAGES:
        rest = median_range([j[stage] for j in others], 0) if others else ""
        print(f"| {stage.removesuffix('_s')} | {median_range([j[stage] for j in first], 0)} | {rest} |")
    print(f"\njobs per round: {len(rounds[0]['jobs'])}; the last round's mean over seeds:")
    print("\n".join(rounds[-1]["table"]))
    path = write_record("quickstart_time", {"overrides": args.extra, "goal_s": GOAL_S, "rounds": rounds})
    verdict = "within" if max(walls) <= GOAL_S else "over"
    print(
        f"quickstart_time: {median_range([w / 60 for w in walls], 1)} min wall over {len(walls)} round(s), "
        f"{verdict} the 15-min goal; record {path}"
    )


if __name__ == "__main__":
    main()
