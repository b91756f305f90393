"""Time to the one-line error: every bad-input case of tests/bad_input_cases.py, run as a user runs it.

    python benchmarks/bad_input.py              # 3 rounds per case
    python benchmarks/bad_input.py --rounds 5

Each case is ``sbr-bench <args>`` in a subprocess (toy model, offline, W&B offline), from the start
of the process to its exit: the Python start-up and the imports are part of what a user waits for.
Prints a markdown table (case, command, exit code, the line on stderr, seconds min / median / max)
and writes benchmarks/results/bad_input.json. Every case must exit with 2 and one line; a case that
does not is marked.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from bad_input_cases import CASES, NO_CUDA_CASE, NO_OPTUNA_CASE, NO_VLLM_CASE, matches, write_files  # noqa: E402
from common import write_record  # noqa: E402


def run_case(args: list[str], folder: Path) -> tuple[int, list[str], float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "SBR_BENCH_CACHE": str(folder / "cache")}
    job = folder / "job"
    command = [sys.executable, "-m", "sbr_bench.cli.run", *args, f"hydra.run.dir={job}", f"hydra.sweep.dir={job}"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=folder, check=False)
    return result.returncode, result.stderr.strip().splitlines(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs per case (default 3)")
    args = parser.parse_args()
    import torch

    from sbr_bench.cli.launchers import installed

    cases = [*CASES, *([] if torch.cuda.is_available() else [NO_CUDA_CASE])]
    cases += [] if installed("hydra_plugins.hydra_optuna_sweeper") else [NO_OPTUNA_CASE]
    cases += [] if installed("vllm") else [NO_VLLM_CASE]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = folder / "files"
        write_files(files)
        for name, case_args, expected in cases:
            argv = [a.replace("{files}", str(files)) for a in case_args]
            times, outcome = [], None
            for _ in range(args.rounds):
                code, lines, seconds = run_case(argv, folder)
                times.append(seconds)
                ok = code == 2 and len(lines) == 1 and matches(lines[0], expected.replace("{files}", str(files)))
                outcome = (code, lines[-1] if lines else "", ok)
            code, line, ok = outcome
            rows.append(
                {
                    "case": name,
                    "command": "sbr-bench " + " ".join(a.replace(str(files), "<files>") for a in argv),
                    "exit_code": code,
                    "stderr": line.replace(str(files), "<files>"),
                    "as_expected": ok,
                    "seconds_min": min(times),
                    "seconds_median": statistics.median(times),
                    "seconds_max": max(times),
                }
            )
            flag = "" if ok else "  NOT AS EXPECTED"
            print(f"{name}: exit {code}, {statistics.median(times):.2f} s{flag}", flush=True)
    print("\n| case | command | exit | stderr | s (min / median / max) |\n|---|---|---|---|---|")
    for r in rows:
        seconds = f"{r['seconds_min']:.2f} / {r['seconds_median']:.2f} / {r['seconds_max']:.2f}"
        mark = "" if r["as_expected"] else " **(not as expected)**"
        print(f"| {r['case']} | `{r['command']}` | {r['exit_code']} | `{r['stderr']}`{mark} | {seconds} |")
    path = write_record("bad_input", {"rounds": args.rounds, "cases": rows})
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
