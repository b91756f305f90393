"""Finished job folders written by hand, as Hydra and ``sbr_bench.job`` leave them: the input of the
report and plot tests (tests/test_report.py, tests/test_plots.py)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

DEFAULT_LAM = {"sbr": 50.0, "booster": 5.0}  # conf/defense/*.yaml


def make_job(root: Path, num: int, overrides: list[str], hs=(80.0, 50.0), fa=90.0, refusal=10.0, **extra) -> Path:
    """One job folder as Hydra and sbr_bench.job leave it; ``overrides`` like the sweep's ``a=1 b=2``."""
    given = dict(o.split("=", 1) for o in overrides)
    defense = given.get("defense", "none")
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    choices = {"model": "toy", "defense": defense, "defense@stack": given.get("defense@stack")}
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    config = {
        "seed": int(given.get("seed", 0)),
        "attack": {"poison_ratio": float(given.get("attack.poison_ratio", 0.1)), "data_seed": 0},
        "defense": {"_target_": f"sbr_bench.defenses.{defense}"},
        "paths": {"output_dir": "${hydra:runtime.output_dir}"},
    }
    if defense in DEFAULT_LAM:
        config["defense"]["lam"] = float(given.get("defense.lam", DEFAULT_LAM[defense]))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    status = extra.pop("status", {"status": "ok"})
    (job / "status.json").write_text(json.dumps(status))
    if status["status"] == "ok":
        metrics = {
            "align/harmful_score": hs[0],
            "eval/harmful_score": hs[1],
            "eval/finetune_acc": fa,
            "eval/over_refusal": refusal,
            **extra,
        }
        (job / "metrics.json").write_text(json.dumps(metrics))  # json writes NaN as NaN, as the pipeline does
    return job


def sweep_of(root: Path, grid: list[tuple[list[str], dict]]) -> Path:
    """A sweep folder of one job per ``(overrides, metric values)`` of ``grid``, on the toy model."""
    for num, (overrides, values) in enumerate(grid):
        make_job(root, num, ["model=toy", *overrides], **values)
    return root
