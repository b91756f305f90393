"""Bad input gets one clear line; a failing or killed job loses nothing; sweeps resume; secrets stay secret.

The command-line cases run ``sbr-bench`` as a user does (subprocesses, toy model, no network).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import sbr_bench

from sbr_bench.data.bundled import read_jsonl
from sbr_bench.errors import ConfigError


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


# Bad input (one line, exit code 2, before any model loads): tests/test_bad_input.py.


def test_a_missing_data_file_is_named(tmp_path):
    # Broken JSON and missing fields (file and record number): tests/test_data.py.
    with pytest.raises(ConfigError, match=r"nothere\.jsonl: no such data file"):
        read_jsonl(tmp_path / "nothere.jsonl", ("prompt",))


def test_a_failing_job_does_not_stop_the_sweep_and_the_report_lists_it(tmp_path, shared_cache):
    """Job 1 fails after its model loaded (its prompts do not fit max_length=4); jobs 0 and 2 finish."""
    result = sbr_bench(
        ["-m", "model=toy", "debug=fast", "attack.max_length=256,4,128", f"hydra.sweep.dir={tmp_path}/sweep"],
        tmp_path,
        shared_cache,
    )
    assert result.returncode == 1
    statuses = [json.loads((tmp_path / "sweep" / str(n) / "status.json").read_text()) for n in range(3)]
    assert [s["status"] for s in statuses] == ["ok", "error", "ok"]
    assert "raise the stage's max_length" in statuses[1]["error"] and "Traceback" in statuses[1]["traceback"]
    assert not (tmp_path / "sweep" / "1" / "metrics.json").exists()
    for n in (0, 2):
        assert json.loads((tmp_path / "sweep" / str(n) / "metrics.json").read_text())["eval/harmful_score"] >= 0
    report = (tmp_path / "sweep" / "report.md").read_text()
    assert "| 1 | attack.max_length=4 |" in report and "raise the stage's max_length" in report
    assert "1 of 3 jobs did not finish (job 1)" in last_line(result) and "resume=true" in last_line(result)
    # The failed job's W&B run was started and is closed as failed (offline run folder present).
    assert list((tmp_path / "sweep" / "1" / "wandb").glob("offline-run-*"))


def test_a_killed_sweep_resumes_without_touching_finished_jobs(tmp_path, shared_cache):
    sweep = tmp_path / "sweep"
    # 40 epochs of 2 steps: job 1's attack lasts long enough to be killed in the middle of it.
    args = [
        "-m",
        "model=toy",
        "debug=fast",
        "attack.epochs=40",
        "logger=none",
        "seed=0,1,2",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "SBR_BENCH_CACHE": str(shared_cache), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sbr_bench.cli.run", *args], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    first = sweep / "0" / "status.json"
    deadline = time.time() + 300
    while not first.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert first.is_file(), "job 0 never finished"
    second = sweep / "1" / "sbr-bench.log"
    while (
        time.time() < deadline
        and proc.poll() is None
        and "attack:" not in (second.read_text() if second.is_file() else "")
    ):
        time.sleep(0.1)  # until job 1's attack is under way
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143, proc.returncode  # not 0: Lightning's own SIGTERM exit is caught too
    assert json.loads(first.read_text())["status"] == "ok"
    assert json.loads((sweep / "1" / "status.json").read_text())["status"] == "interrupted"
    for n in (1, 2):
        metrics = sweep / str(n) / "metrics.json"
        if metrics.exists():  # written atomically: complete or absent
            json.loads(metrics.read_text())
    kept = (sweep / "0" / "metrics.json").stat().st_mtime_ns, (sweep / "0" / "metrics.json").read_bytes()

    again = sbr_bench([*args, "resume=true"], tmp_path, shared_cache)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [json.loads((sweep / str(n) / "status.json").read_text())["status"] for n in range(3)] == ["ok"] * 3
    assert kept == ((sweep / "0" / "metrics.json").stat().st_mtime_ns, (sweep / "0" / "metrics.json").read_bytes())
    assert "resume: " in (sweep / "0" / "sbr-bench.log").read_text()


def test_resume_refuses_a_folder_of_another_sweep(tmp_path, shared_cache):
    job = ["model=toy", "debug=fast", "logger=none", f"hydra.run.dir={tmp_path}/job"]
    assert sbr_bench([*job, "seed=0"], tmp_path, shared_cache).returncode == 0
    result = sbr_bench([*job, "seed=1", "resume=true"], tmp_path, shared_cache)
    assert result.returncode == 2 and "other overrides (model=toy debug=fast logger=none seed=0)" in last_line(result)


SECRETS = {
    "OPENAI_API_KEY": "sk-test-a1b2c3d4e5f6-secret",
    "HF_TOKEN": "hf_secretTOKEN0123456789",
    "WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567",
}


def test_secrets_from_the_environment_reach_no_output_file(tmp_path, shared_cache):
    out = tmp_path / "job"
    result = sbr_bench(["model=toy", "debug=fast", f"hydra.run.dir={out}"], tmp_path, shared_cache, env=dict(SECRETS))
    assert result.returncode == 0, result.stderr[-3000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files) and any(".wandb" in p.name for p in files)
    for path in files:
        data = path.read_bytes()
        for name, value in SECRETS.items():
            assert value.encode() not in data, f"{name} leaked into {path}"
    assert all(v not in result.stdout + result.stderr for v in SECRETS.values())


def test_weights_are_kept_only_when_asked_and_then_adapter_only(tmp_path, shared_cache):
    plain, kept = tmp_path / "plain", tmp_path / "kept"
    common = ["model=toy", "debug=fast", "logger=none"]
    assert sbr_bench([*common, f"hydra.run.dir={plain}"], tmp_path, shared_cache).returncode == 0
    assert (
        sbr_bench([*common, "attack.keep_adapter=true", f"hydra.run.dir={kept}"], tmp_path, shared_cache).returncode
        == 0
    )
    weights = (".safetensors", ".bin", ".ckpt", ".pt")
    assert not [p for p in plain.rglob("*") if p.suffix in weights]
    saved = [p.relative_to(kept) for p in kept.rglob("*") if p.suffix in weights]
    assert saved == [Path("adapter/adapter_model.safetensors")]
    assert (kept / "adapter" / "adapter_model.safetensors").stat().st_size < 2_000_000  # the toy's LoRA, not the model
