"""Every defense option runs the whole job (align -> attack -> evaluate) on the toy model, and on SmolLM2 (slow).

Short runs over every option of ``conf/defense/`` (nothing to edit when a defense is added): these
tests show that each option plugs into the real pipeline and leaves a complete job folder and its
cache entry. What each defense does within a stage (its terms logged, its gradients, plain SFT at
its ``plain_sft_at`` settings, which alignment it shares) is the contract matrix of
tests/test_defense_contract.py; the math of each defense is tested in its own file.
"""

from __future__ import annotations

import json
import math

import pytest
from helpers import alignment_entry, compose_config, needs_smollm2
from hydra.utils import instantiate

from sbr_bench.defenses import defense_options
from sbr_bench.defenses.none import NoDefense
from sbr_bench.job import run_job

FAST = ["debug=fast", "logger=none"]
# A short alignment (the toy tier's default is 300 steps): its first half is plain SFT, the second
# half under an alignment-stage defense (align=scratch's defense_start 0.5). Every option that does
# not act in the alignment shares this one, trained once per session.
TOY_ALIGN = ["align.max_steps=8"]


def run(overrides, tmp_path, cache):
    cfg = compose_config(overrides, tmp_path / "job", cache, keep_hydra=False)
    run_job(cfg)
    metrics = json.loads((tmp_path / "job" / "metrics.json").read_text())
    status = json.loads((tmp_path / "job" / "status.json").read_text())
    return cfg, metrics, status


OPTIONS = defense_options()


@pytest.mark.parametrize("name", OPTIONS)
def test_every_defense_runs_a_whole_job_on_the_toy_model(name, tmp_path, shared_cache):
    cfg, metrics, status = run(["model=toy", *FAST, f"defense={name}", *TOY_ALIGN], tmp_path, shared_cache)
    assert status["status"] == "ok"
    for key in ("align/harmful_score", "eval/harmful_score", "eval/finetune_acc", "eval/over_refusal"):
        assert 0.0 <= metrics[key] <= 100.0
    assert math.isfinite(metrics["attack/loss_final"])
    assert (shared_cache / "aligned" / alignment_entry(cfg) / "meta.json").is_file()  # the key the job used
    defense = instantiate(cfg.defense)
    assert status["defenses"] == ({} if isinstance(defense, NoDefense) else {defense.stage: name})


@pytest.mark.slow
@needs_smollm2
@pytest.mark.parametrize("name", OPTIONS)
def test_every_defense_runs_a_whole_job_on_smollm2(name, tmp_path, shared_cache):
    # Small alignment pools with short self-distilled answers, and alignment batches of 2: self-
    # distillation, the passes over the whole alignment pool (EWC's Fisher, RepNoise's harmful set)
    # and the alignment-stage defenses' own steps (Booster's three passes, RepNoise's logit lens over
    # every layer) were most of each job's time, and this test only shows that each defense runs on
    # the real model.
    small_alignment = [
        *("align.max_steps=2", "align.batch_size=2", "align.num_harmful=8", "align.num_benign=8"),
        "align.self_max_new_tokens=8",
        *("data.harmful.align=16", "data.benign.eval=224"),  # 16 harmful and 16 benign alignment pairs
    ]
    overrides = ["model=smollm2_135m", *FAST, f"defense={name}", *small_alignment, "eval.max_new_tokens=8"]
    _, metrics, status = run(overrides, tmp_path, shared_cache)
    assert status["status"] == "ok"
    assert math.isfinite(metrics["attack/loss_final"]) and 0.0 <= metrics["eval/harmful_score"] <= 100.0
