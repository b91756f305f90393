"""Model load: SmolLM2-135M from the cached safetensors copy vs from the package's GGUF file.

    python benchmarks/model_load.py

Each load runs in a fresh Python process, twice per source, alternating; the figure is the median.
Imports are excluded (the clock starts after transformers' Llama and tokenizer modules are
imported: ~4 s on this machine, paid once per process by any source). Goal
(performance issue): at most 2 s from the cached copy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_record

PROBE = r"""
import json, sys, time
# Imports before the clock starts (transformers imports its modules lazily, on first use).
import gguf, transformers.models.llama.modeling_llama, transformers.models.auto.tokenization_auto
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
from sbr_bench.models import smollm2
source, cache = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if source == "cached":
    smollm2.load(cache_dir=cache)
else:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    gguf = smollm2.gguf_path()
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def load_seconds(source: str, cache: str) -> float:
    result = subprocess.run([sys.executable, "-c", PROBE, source, cache], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"loading from {source} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=str(Path("~/.cache/sbr-bench/models").expanduser()))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from sbr_bench.models.smollm2 import cached_copy

    cached_copy(args.cache_dir)  # convert once if this machine has not yet
    times: dict[str, list[float]] = {"cached": [], "gguf": []}
    for _ in range(args.repeats):
        for source in times:
            times[source].append(load_seconds(source, args.cache_dir))
            print(f"{source}: {times[source][-1]:.2f} s", flush=True)
    cached, gguf = statistics.median(times["cached"]), statistics.median(times["gguf"])
    record = {
        "model": "smollm2_135m",
        "cached_s": round(cached, 2),
        "gguf_s": round(gguf, 2),
        "ratio": round(cached / gguf, 3),
        "goal_cached_s": 2.0,
        "runs": times,
    }
    path = write_record("model_load", record)
    print(
        f"model_load: cached copy {cached:.2f} s (goal <= 2 s) vs GGUF {gguf:.2f} s = {cached / gguf:.3f}x; "
        f"record {path}"
    )


if __name__ == "__main__":
    main()
