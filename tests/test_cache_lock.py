"""The cache lock: concurrent jobs that need the same cache entry compute it once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from sbr_bench.io import exclusive

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from sbr_bench.io import exclusive
    entry, log = sys.argv[1], Path(sys.argv[2])
    with exclusive(entry):
        print("locked", flush=True)
        time.sleep(1.0)
        log.write_text(log.read_text() + "holder done\\n")
    """
)


def test_a_second_process_waits_until_the_first_releases(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "entry"), str(log)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    with exclusive(tmp_path / "entry"):
        seen = log.read_text()
        log.write_text(seen + "waiter inside\n")
    assert holder.wait(timeout=60) == 0
    assert seen == "holder done\n"  # the waiter got in only after the holder's block had finished
    assert log.read_text() == "holder done\nwaiter inside\n"


def test_a_killed_holder_does_not_block_the_others(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.replace("time.sleep(1.0)", "time.sleep(600)"), str(tmp_path / "e"), "/dev/null"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait(timeout=60)
    with exclusive(tmp_path / "e"):  # the kernel released the dead process's lock
        pass


def test_two_concurrent_jobs_sharing_an_alignment_train_it_once(tmp_path):
    """Two toy jobs started together with one empty cache: one trains the alignment, the other reuses it."""
    cache = tmp_path / "cache"
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "SBR_BENCH_CACHE": str(cache)}
    jobs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sbr_bench.cli.run",
                "model=toy",
                "debug=fast",
                "align.max_steps=120",
                f"seed={seed}",
                "logger=none",
                f"hydra.run.dir={tmp_path / f'job{seed}'}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (0, 1)
    ]
    for job in jobs:
        _, err = job.communicate(timeout=600)
        assert job.returncode == 0, err[-3000:]
    cached = sorted(json.loads(Path(tmp_path / f"job{s}" / "metrics.json").read_text())["align/cached"] for s in (0, 1))
    assert cached == [0.0, 1.0]
    entries = [p for p in (cache / "aligned").iterdir() if p.is_dir() and not p.name.startswith(".tmp")]
    assert len(entries) == 1
