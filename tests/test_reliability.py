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
from test_cli import sbr_bench

from sbr_bench.data.bundled import read_jsonl
from sbr_bench.errors import ConfigError


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


# (overrides, the exact line the user sees). Each case fails before any training.
BAD_INPUT = [
    (
        ["defense=sbrr"],
        "sbr-bench: error: defense=sbrr: no such option; valid options: booster, constrained_sft, ewc, l2sp, lisa, "
        "none, repnoise, repnoise_hft, safety_mix, sbr, vaccine",
    ),
    (
        ["model=llama"],
        "sbr-bench: error: model=llama: no such option; valid options: llama2_7b, llama3_8b_instruct, "
        "qwen2_7b_instruct, smollm2_135m, toy",
    ),
    (["defense@stack=vacine"], None),  # the stack slot too (valid options as for defense)
    (
        ["-m", "attack.poison_ratio=0.1", "judge=keyword,gpt"],
        "sbr-bench: error: judge=gpt: no such option; valid options: beaverdam, keyword, llamaguard, llm_api",
    ),
    (["defense=sbr", "defense.lam=-1"], "sbr-bench: error: defense.lam=-1 must be >= 0"),
    (["attack.poison_ratio=1.5"], "sbr-bench: error: attack.poison_ratio=1.5 is outside [0, 1]"),
    (["attack.poison_ratio=-0.1"], "sbr-bench: error: attack.poison_ratio=-0.1 is outside [0, 1]"),
    (["attack.num_samples=5000"], None),
    (["defense=sbr", "defense.num_anchors=50"], None),
    (["trainer=gpu"], None),
    (
        ["align=none", "defense=vaccine"],
        "sbr-bench: error: Vaccine acts in the alignment stage, which align=none skips; add align=sft",
    ),
    (
        ["defense=sbr", "defense@stack=l2sp"],
        "sbr-bench: error: defense and stack both act in the attack stage; stack defenses of different stages "
        "(e.g. defense=sbr defense@stack=vaccine)",
    ),
]


@pytest.mark.parametrize("overrides, expected", BAD_INPUT, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_input_is_one_line_and_exit_code_2(overrides, expected, tmp_path):
    if overrides == ["trainer=gpu"] and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = sbr_bench(["model=toy", *overrides, f"hydra.run.dir={tmp_path}/job"], tmp_path, tmp_path / "cache")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sbr-bench: error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    if expected:
        assert lines[0] == expected


def test_the_messages_say_how_to_fix_it(tmp_path):
    cases = {
        "attack.num_samples=5000": "attack pool holds",
        "defense.num_anchors=50": "use num_anchors <= 20",
        "trainer=gpu": "use trainer=cpu or trainer=auto",
        "defense@stack=vacine": "valid options: booster",
    }
    for override, hint in cases.items():
        extra = ["defense=sbr"] if "anchors" in override else []
        result = sbr_bench(["model=toy", *extra, override, f"hydra.run.dir={tmp_path}/j"], tmp_path, tmp_path / "c")
        if override == "trainer=gpu" and result.returncode == 0:
            continue  # a machine with CUDA
        assert hint in last_line(result), (override, last_line(result))


def test_a_missing_data_file_is_named(tmp_path):
    # Broken JSON and missing fields (file and record number): tests/test_data.py.
    with pytest.raises(ConfigError, match=r"nothere\.jsonl: no such data file"):
        read_jsonl(tmp_path / "nothere.jsonl", ("prompt",))


def test_a_failing_job_does_not_stop_the_sweep_and_the_report_lists_it(tmp_path, shared_cache):
    """Job 1 raises inside training (AdamW refuses a negative learning rate); jobs 0 and 2 finish."""
    result = sbr_bench(
        ["-m", "model=toy", "debug=fast", "attack.lr=1e-3,-1,2e-3", f"hydra.sweep.dir={tmp_path}/sweep"],
        tmp_path,
        shared_cache,
    )
    assert result.returncode == 1
    statuses = [json.loads((tmp_path / "sweep" / str(n) / "status.json").read_text()) for n in range(3)]
    assert [s["status"] for s in statuses] == ["ok", "error", "ok"]
    assert "Invalid learning rate" in statuses[1]["error"] and "Traceback" in statuses[1]["traceback"]
    assert not (tmp_path / "sweep" / "1" / "metrics.json").exists()
    for n in (0, 2):
        assert json.loads((tmp_path / "sweep" / str(n) / "metrics.json").read_text())["eval/harmful_score"] >= 0
    report = (tmp_path / "sweep" / "report.md").read_text()
    assert "| 1 | attack.lr=-1 |" in report and "error: ValueError: Invalid learning rate" in report
    assert "1 of 3 jobs did not finish (job 1)" in last_line(result) and "resume=true" in last_line(result)
    # The failed job's W&B run was started and is closed as failed (offline run folder present).
    assert list((tmp_path / "sweep" / "1" / "wandb").glob("offline-run-*"))


def test_a_killed_sweep_resumes_without_touching_finished_jobs(tmp_path, shared_cache):
    sweep = tmp_path / "sweep"
    args = ["-m", "model=toy", "debug=fast", "logger=none", "seed=0,1,2", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "SBR_BENCH_CACHE": str(shared_cache), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sbr_bench.cli", *args], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    first = sweep / "0" / "status.json"
    deadline = time.time() + 300
    while not first.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert first.is_file(), "job 0 never finished"
    time.sleep(1.0)  # job 1 is under way
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert json.loads(first.read_text())["status"] == "ok"
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
