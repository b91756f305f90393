"""Peak memory of one job: the toy job and a SmolLM2 job, each a real ``sbr-bench`` run.

    python benchmarks/peak_memory.py
    python benchmarks/peak_memory.py --smollm2-extra debug=fast     # a shorter SmolLM2 job

Each job runs in its own subprocess with a fresh cache folder (so it trains its alignment, the
most memory-hungry stage, and evaluates), W&B off; the figure is the job process's peak resident
memory (``ru_maxrss`` of a tiny wrapper's child, so nothing of this script counts). The SmolLM2
job is the embedded default (alignment, attack and evaluation at the CPU tier's settings) unless
``--smollm2-extra`` shortens it; its safetensors copy comes from the shared model cache. On a GPU
the peak of ``torch.cuda`` memory would be the figure; this script measures CPU runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_record

WRAPPER = r"""
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print("PEAK_KIB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "RC", code)
"""


def job_peak_mib(overrides: list[str]) -> tuple[float, float]:
    """(peak resident MiB, seconds) of one ``sbr-bench`` job with a fresh cache."""
    with tempfile.TemporaryDirectory(prefix="sbr-bench-mem-") as tmp:
        command = [sys.executable, "-m", "sbr_bench.cli.run", "logger=none", f"paths.cache_dir={tmp}/cache"]
        command += [f"hydra.run.dir={tmp}/job", *overrides]
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", WRAPPER, *command], capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
    last = result.stdout.strip().splitlines()[-1].split()
    if last[0] != "PEAK_KIB" or last[3] != "0":
        raise SystemExit(f"job {' '.join(overrides)} failed:\n{result.stderr[-3000:]}")
    return int(last[1]) / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smollm2-extra", nargs="*", default=[], help="more overrides for the SmolLM2 job")
    args = parser.parse_args()

    models = str(Path("~/.cache/sbr-bench/models").expanduser())
    jobs = {
        "toy": ["model=toy"],
        "smollm2_135m": ["model=smollm2_135m", f"model.cache_dir={models}", *args.smollm2_extra],
    }
    rows = {}
    for name, overrides in jobs.items():
        peak, seconds = job_peak_mib(overrides)
        rows[name] = {"peak_rss_mib": round(peak, 1), "job_s": round(seconds, 1), "overrides": overrides}
        print(f"{name}: peak {peak:.0f} MiB, {seconds:.0f} s", flush=True)
    path = write_record("peak_memory", {"device_used": "cpu", "jobs": rows})
    toy, smol = rows["toy"]["peak_rss_mib"], rows["smollm2_135m"]["peak_rss_mib"]
    print(f"peak_memory: toy job {toy:.0f} MiB, SmolLM2 job {smol:.0f} MiB ({smol / toy:.1f}x the toy); record {path}")


if __name__ == "__main__":
    main()
