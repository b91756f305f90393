"""Sweep cost: a 4-job sweep sharing one alignment setting, with the alignment cache vs without.

    python benchmarks/sweep_cache.py                    # toy model, 4 attack seeds
    python benchmarks/sweep_cache.py --model smollm2_135m --extra debug=fast align.max_steps=20

Both runs are the real CLI (``sbr-bench -m ... seed=0,1,2,3``) in subprocesses, W&B off. With the
cache, the four jobs share one fresh cache folder: the first job aligns (and evaluates the aligned
model), the other three reuse it. Without, every job gets its own empty cache folder
(``paths.cache_dir=<tmp>/job${seed}``), so each one aligns again - what a suite without a cache
pays. The SmolLM2 safetensors copy is shared by both (it is a one-time conversion, not part of a
sweep). Goal (performance issue): at most 0.5x the time. The toy model is the default because the
uncached SmolLM2 sweep takes most of an hour on a 2-core CPU; pass ``--model`` to measure it.
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
from common import write_record

SEEDS = "0,1,2,3"


def sweep(model: str, cache: str, extra: list[str], folder: Path) -> float:
    """Seconds of one ``sbr-bench -m`` sweep over four seeds."""
    command = [
        sys.executable,
        "-m",
        "sbr_bench.cli.run",
        "-m",
        f"model={model}",
        f"seed={SEEDS}",
        "logger=none",
        f"paths.cache_dir={cache}",
        f"model.cache_dir={Path('~/.cache/sbr-bench/models').expanduser()}" if model != "toy" else "",
        f"hydra.sweep.dir={folder}",
        *extra,
    ]
    start = time.perf_counter()
    result = subprocess.run([c for c in command if c], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"sweep failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return seconds


def harmful_scores(folder: Path) -> list[float]:
    return [json.loads(p.read_text())["eval/harmful_score"] for p in sorted(folder.glob("*/metrics.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for both sweeps")
    args = parser.parse_args()

    os.environ.setdefault("WANDB_MODE", "disabled")
    with tempfile.TemporaryDirectory(prefix="sbr-bench-sweep-") as tmp:
        root = Path(tmp)
        uncached = sweep(args.model, str(root / "nocache" / "job${seed}"), args.extra, root / "uncached")
        print(f"without the cache: {uncached:.1f} s", flush=True)
        cached = sweep(args.model, str(root / "cache"), args.extra, root / "cached")
        print(f"with the cache:    {cached:.1f} s", flush=True)
        same = harmful_scores(root / "cached") == harmful_scores(root / "uncached")
    record = {
        "model": args.model,
        "jobs": 4,
        "extra": args.extra,
        "cached_s": round(cached, 1),
        "uncached_s": round(uncached, 1),
        "ratio": round(cached / uncached, 3),
        "goal_ratio": 0.5,
        "same_results": same,
    }
    path = write_record("sweep_cache", record)
    print(
        f"sweep_cache: 4-job sweep with the alignment cache / without = {record['ratio']:.2f} (goal <= 0.5; "
        f"{cached:.0f} s vs {uncached:.0f} s, same results: {same}); record {path}"
    )


if __name__ == "__main__":
    main()
