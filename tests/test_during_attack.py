"""Evaluation along the attack and diagnostics, through the real pipeline on the toy model.

The toy is used as aligned (``align=none``: no alignment to train, so the file stays fast alone);
curves, collapse epochs, the training trajectory and W&B are plumbing that any weights exercise.
"""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from helpers import read_json
from safetensors.torch import load_file

from sbr_bench.errors import ConfigError
from sbr_bench.evaluation.during_attack import DuringAttackEval, attack_monitors, first_crossing
from sbr_bench.job import run_job

SMALL = [
    "model=toy",
    "align=none",
    "eval.before_attack=false",
    "attack.num_samples=16",  # 2 batches of 8 per epoch
    "attack.epochs=2",
    "eval.num_harmful=5",
    "eval.num_benign=5",
    "eval.num_task=5",
    "eval.max_new_tokens=6",
    "eval.task_max_new_tokens=4",
    "attack.keep_adapter=true",
]
STEPS_PER_EPOCH = 2
JOBS = {
    # every epoch, diagnostics every 3 steps, W&B on
    "epochs": ["eval.during_attack.every=1", "eval.diagnostics.every=3", "eval.during_attack.collapse_threshold=50"],
    # every 3 optimizer steps, a smaller harmful subset
    "steps": [
        "eval.during_attack.every=3",
        "eval.during_attack.unit=step",
        "eval.during_attack.num_harmful=4",
        "logger=none",
    ],
    # both monitors off: the reference trajectory
    "off": ["eval.diagnostics.enabled=false", "logger=none"],
}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    from helpers import compose_config

    root = tmp_path_factory.mktemp("monitor")
    for name, overrides in JOBS.items():
        run_job(compose_config([*SMALL, *overrides], root / name, root / "cache"))
    return {name: root / name for name in JOBS}


def test_curve_has_step_zero_and_one_point_per_epoch(jobs):
    curves = read_json(jobs["epochs"])["curves"]
    assert curves["epoch"] == [0.0, 1.0, 2.0]
    assert curves["step"] == [0, STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    for key in ("harmful_score", "finetune_acc", "over_refusal"):
        assert len(curves[key]) == 3 and all(0.0 <= v <= 100.0 for v in curves[key])


def test_curve_by_steps_and_its_subset(jobs):
    metrics = read_json(jobs["steps"])
    assert metrics["curves"]["step"] == [0, 3]  # 4 steps in all
    assert metrics["curves"]["epoch"] == [0.0, 1.5]
    # 4 harmful prompts per point (the final evaluation has 5): every harmful score is a multiple of 25 %
    assert all(v % 25 == 0 for v in metrics["curves"]["harmful_score"])


def test_epochs_to_collapse_is_the_first_point_above_the_threshold(jobs):
    metrics = read_json(jobs["epochs"])
    curves = metrics["curves"]
    hits = [i for i, hs in enumerate(curves["harmful_score"]) if hs > 50]
    if hits:
        assert metrics["eval/epochs_to_collapse"] == curves["epoch"][hits[0]]
        assert metrics["eval/steps_to_collapse"] == curves["step"][hits[0]]
        assert metrics["eval/collapsed"] == 1.0
    else:
        assert "eval/epochs_to_collapse" not in metrics and metrics["eval/collapsed"] == 0.0


@pytest.mark.parametrize(
    ("scores", "threshold", "expected"),
    [([10.0, 20.0, 40.0, 35.0], 30, 2), ([10.0, 30.0, 31.0], 30, 2), ([40.0, 10.0], 30, 0), ([30.0, 5.0], 30, None)],
)
def test_collapse_is_strictly_above_the_threshold(scores, threshold, expected):
    assert first_crossing(scores, threshold) == expected
    monitor = DuringAttackEval({}, None, None, None, every=5, collapse_threshold=threshold)
    monitor.curves.update(epoch=[5.0 * i for i in range(len(scores))], step=[50 * i for i in range(len(scores))])
    monitor.curves["harmful_score"] = scores
    flat = monitor.flat()
    if expected is None:
        assert flat["eval/collapsed"] == 0.0 and "eval/epochs_to_collapse" not in flat
    else:
        assert flat["eval/epochs_to_collapse"] == 5.0 * expected and flat["eval/steps_to_collapse"] == 50 * expected


def test_monitors_do_not_change_the_training_trajectory(jobs):
    off = load_file(jobs["off"] / "adapter" / "adapter_model.safetensors")
    for name in ("epochs", "steps"):
        on = load_file(jobs[name] / "adapter" / "adapter_model.safetensors")
        assert on.keys() == off.keys()
        assert all(torch.equal(on[k], off[k]) for k in off), name
        assert read_json(jobs[name])["eval/harmful_score"] == read_json(jobs["off"])["eval/harmful_score"]
    assert "curves" not in read_json(jobs["off"]) and "diagnostics" not in read_json(jobs["off"])


def test_diagnostics_records_start_at_zero_and_end_with_the_final_keys(jobs):
    metrics = read_json(jobs["epochs"])
    records = metrics["diagnostics"]
    assert [r["step"] for r in records] == [0, 3, 4]  # start, every 3 steps, the last step
    first, last = records[0], records[-1]
    assert first["anchor_distance"] == first["param_distance"] == first["harmful_drift"] == 0.0
    assert last["param_distance"] > 0 and last["harmful_drift"] > 0
    assert last["loss_task"] == metrics["attack/loss_task_final"]
    for key in ("anchor_distance", "param_distance", "lora_delta_norm", "harmful_drift", "refusal_start_prob"):
        assert metrics[f"diag/{key}_final"] == last[key]


def wandb_history(run_dir) -> list[dict]:
    """The history rows of an offline W&B run, read from its .wandb file (a LevelDB-style record log)."""
    from wandb.proto import wandb_internal_pb2

    data = next(run_dir.glob("*.wandb")).read_bytes()
    block, pos, buf, rows = 32768, 7, b"", []  # 7-byte file header, then 32 KiB blocks of records
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        buf = (buf if kind in (3, 4) else b"") + data[pos + 7 : pos + 7 + length]  # 1 full, 2 first, 3 mid, 4 last
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_curves_and_diagnostics_reach_wandb(jobs):
    metrics = read_json(jobs["epochs"])
    rows = wandb_history(next((jobs["epochs"] / "wandb").glob("offline-run-*")))
    during = [r for r in rows if "during_attack/harmful_score" in r]
    assert [r["trainer/global_step"] for r in during] == metrics["curves"]["step"]
    assert [r["during_attack/harmful_score"] for r in during] == metrics["curves"]["harmful_score"]
    diag = [r for r in rows if "diag/param_distance" in r]
    assert [r["trainer/global_step"] for r in diag] == [r["step"] for r in metrics["diagnostics"]]
    assert all(
        math.isclose(r["diag/param_distance"], d["param_distance"])
        for r, d in zip(diag, metrics["diagnostics"], strict=True)
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"during_attack": {"every": 1, "unit": "batch"}}, r"eval.during_attack.unit='batch' is not one of"),
        ({"during_attack": {"every": -1}}, r"eval.during_attack.every=-1 must be >= 0"),
        ({"during_attack": {"every": 1, "num_harmful": 0}}, r"eval.during_attack.num_harmful=0 must be >= 1"),
        ({"during_attack": {"evry": 1}}, r"eval.during_attack has no key evry"),
        ({"diagnostics": {"enabled": True, "every": 0}}, r"eval.diagnostics.every=0 must be >= 1"),
    ],
)
def test_bad_settings_are_one_clear_line(settings, message, pools):
    with pytest.raises(ConfigError, match=message):
        attack_monitors(settings, pools, judge=None, run_evaluation=None)


def test_defaults_add_diagnostics_only(make_cfg, pools):
    from omegaconf import OmegaConf

    cfg = make_cfg(["model=toy"])
    monitors = attack_monitors(OmegaConf.to_container(cfg.eval, resolve=True), pools, None, None)
    assert [type(m).__name__ for m in monitors] == ["DiagnosticsCallback"]
