"""The installed commands, run as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import generations, sbr_bench

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, shared_cache):
    """``sbr-bench -m model=toy defense=none,sbr attack.poison_ratio=0.1,0.2`` (small attack)."""
    root = tmp_path_factory.mktemp("sweep")
    result = sbr_bench(
        ["-m", "model=toy", "defense=none,sbr", "attack.poison_ratio=0.1,0.2", "debug=fast", f"hydra.sweep.dir={root}"],
        cwd=root,
        cache=shared_cache,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_multirun_writes_four_jobs_each_with_metrics_and_its_own_wandb_run(sweep):
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    run_ids = set()
    for job in jobs:
        assert json.loads((job / "status.json").read_text())["status"] == "ok"
        assert "eval/harmful_score" in json.loads((job / "metrics.json").read_text())
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1
        run_ids.add(runs[0].name.rsplit("-", 1)[-1])
    assert len(run_ids) == 4


def test_each_wandb_run_holds_its_config_nested_and_its_group_choices(sweep):
    from wandb_offline import run_config

    seen = set()
    for job in sorted(p for p in sweep.iterdir() if (p / "wandb").is_dir()):
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        (run_file,) = (job / "wandb").glob("offline-run-*/run-*.wandb")
        config = run_config(run_file)
        assert not [k for k in config if "." in k], "W&B config keys are nested, never dotted"
        choices, ratio = config["choices"], config["attack"]["poison_ratio"]
        assert f"defense={choices['defense']}" in overrides and f"attack.poison_ratio={ratio}" in overrides
        assert choices["model"] == "toy" and choices["attack"] == "hft" and config["seed"] == 0
        if choices["defense"] == "sbr":
            assert config["defense"]["lam"] == 50
        seen.add((choices["defense"], ratio))
    assert seen == {("none", 0.1), ("none", 0.2), ("sbr", 0.1), ("sbr", 0.2)}


def test_the_runs_of_a_sweep_have_distinct_names_from_what_varies(sweep):
    from wandb_offline import run_name

    names = [run_name(f) for f in sorted(sweep.glob("*/wandb/offline-run-*/run-*.wandb"))]
    assert names == [
        "none-hft-toy-attack.poison_ratio=0.1-s0",
        "none-hft-toy-attack.poison_ratio=0.2-s0",
        "sbr-hft-toy-attack.poison_ratio=0.1-s0",
        "sbr-hft-toy-attack.poison_ratio=0.2-s0",
    ]
    axes = json.loads((sweep / "sweep.json").read_text())["varying"]
    assert axes == ["defense", "attack.poison_ratio"]  # model=toy and debug=fast are the same in every job


def test_each_wandb_run_holds_a_table_of_its_generations_with_their_verdicts(sweep):
    for job in sorted(p for p in sweep.iterdir() if (p / "wandb").is_dir()):
        (table_file,) = (job / "wandb").glob("offline-run-*/files/media/table/generations_*.table.json")
        table = json.loads(table_file.read_text())
        assert table["columns"] == [
            "stage",
            "pool",
            "prompt_id",
            "prompt",
            "response",
            "verdict",
            "label",
            "category",
            "truncated",
        ]
        saved = generations(job)
        assert len(table["data"]) == len(saved) > 0
        for row, record in zip(table["data"], saved, strict=True):
            cells = dict(zip(table["columns"], row, strict=True))
            assert (cells["stage"], cells["pool"], cells["prompt"], cells["response"]) == (
                record["stage"],
                record["pool"],
                record["prompt"],
                record["response"],
            )
            expected = {  # the verdict word is the saved verdict, never recomputed
                "harmful": {True: "harmful", False: "safe", None: "missing"}.get(record.get("harmful")),
                "benign": "refused" if record.get("refused") else "answered",
                "task": {True: "correct", False: "wrong", None: "unchecked"}.get(record.get("correct")),
            }[record["pool"]]
            assert cells["verdict"] == expected
        # the harmful score in metrics.json is the share of "harmful" verdicts after the attack
        after = [c for c in table["data"] if c[0] == "after_attack" and c[1] == "harmful"]
        verdict = table["columns"].index("verdict")
        hs = 100 * sum(c[verdict] == "harmful" for c in after) / sum(c[verdict] != "missing" for c in after)
        assert hs == pytest.approx(json.loads((job / "metrics.json").read_text())["eval/harmful_score"])


def test_report_prints_the_sweep_table(sweep):
    result = subprocess.run(
        [sys.executable, "-m", "sbr_bench.cli.report", str(sweep), "--format", "markdown"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "all jobs: model=toy debug=fast"  # what every job shares is said once
    assert lines[2] == "| job | overrides | HS before | HS after | FA | over-refusal | status |"
    assert len(lines) == 4 + 4
    assert lines[-1].startswith("| 3 | defense=sbr attack.poison_ratio=0.2 |") and lines[-1].endswith("| ok |")


def test_bad_value_is_one_clear_line_and_exit_code_2_and_leaves_no_folder(tmp_path):
    result = sbr_bench(
        ["model=toy", "attack.poison_ratio=1.5", f"hydra.run.dir={tmp_path}/job"], tmp_path, tmp_path / "c"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "sbr-bench: error: attack.poison_ratio=1.5 is outside [0, 1]"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "job").exists()  # refused before Hydra made the job's folder


def test_a_defense_setting_is_checked_from_its_signature(tmp_path):
    """The schema of defense=sbr is SBR.__init__'s annotations: lam is a NonNegativeFloat."""
    result = sbr_bench(
        ["model=toy", "defense=sbr", "defense.lam=-1", f"hydra.run.dir={tmp_path}/job"], tmp_path, tmp_path / "c"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["sbr-bench: error: defense.lam=-1 must be >= 0"]


def test_an_error_raised_inside_a_constructor_is_one_clear_line_too(tmp_path):
    """Hydra's instantiate wraps what a constructor raises (a rule across two keys); the user sees one line."""
    args = ["model=toy", "defense=safety_mix", "defense.num_samples=100", f"hydra.run.dir={tmp_path}/job"]
    result = sbr_bench(args, tmp_path, tmp_path / "c")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sbr-bench: error: defense.num_samples=100 and defense.ratio=0.5: set exactly one "
        "(defense.num_samples=null for the ratio, defense.ratio=null for the count)"
    ]


def test_runs_from_any_directory(tmp_path):
    result = sbr_bench(["model=toy", "--cfg", "job"], tmp_path, tmp_path / "c")
    assert result.returncode == 0, result.stderr
    assert "sbr_bench.models.toy.load" in result.stdout
