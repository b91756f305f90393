"""Every defense runs the whole job (align -> attack -> evaluate) on the toy model, and on SmolLM2 (slow).

Short runs: these tests show that each defense plugs into the real pipeline, trains, logs its terms
and leaves a complete job folder; the math of each defense is tested in its own file.
"""

from __future__ import annotations

import json
import math

import pytest
from helpers import compose_config, needs_smollm2
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sbr_bench import alignment
from sbr_bench.data.formatting import apply_prompt_format
from sbr_bench.job import run_job
from sbr_bench.models.toy import build_tokenizer
from sbr_bench.settings import AlignSettings

DEFENSES = ("none", "sbr", "vaccine", "repnoise", "booster", "lisa", "safety_mix", "l2sp", "ewc", "constrained_sft")
ALIGN_STAGE = ("vaccine", "repnoise", "booster")
FAST = ["debug=fast", "logger=none"]


def alignment_entry(cfg) -> str:
    """The alignment cache key the job computes for this config."""
    pools = instantiate(cfg.data)
    align = OmegaConf.to_container(cfg.align, resolve=True)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    defense = OmegaConf.to_container(cfg.defense, resolve=True) if instantiate(cfg.defense).stage == "align" else None
    examples = alignment.alignment_examples(pools, AlignSettings.model_validate(align))
    tokenizer = build_tokenizer()
    apply_prompt_format(tokenizer, cfg.prompt_format)
    environment = alignment.training_environment(tokenizer, OmegaConf.to_container(cfg.trainer, resolve=True), "cpu")
    return alignment.alignment_key(model, align, defense, examples, environment)


def run(overrides, tmp_path, cache):
    cfg = compose_config(overrides, tmp_path / "job", cache, keep_hydra=False)
    run_job(cfg)
    metrics = json.loads((tmp_path / "job" / "metrics.json").read_text())
    status = json.loads((tmp_path / "job" / "status.json").read_text())
    return cfg, metrics, status


@pytest.mark.parametrize("name", DEFENSES)
def test_every_defense_runs_a_whole_job_on_the_toy_model(name, tmp_path, shared_cache):
    # A shorter alignment than the default keeps the alignment-stage defenses (2-3 passes a step) quick.
    cfg, metrics, status = run(["model=toy", *FAST, f"defense={name}", "align.max_steps=60"], tmp_path, shared_cache)
    assert status["status"] == "ok"
    for key in ("align/harmful_score", "eval/harmful_score", "eval/finetune_acc", "eval/over_refusal"):
        assert 0.0 <= metrics[key] <= 100.0
    assert math.isfinite(metrics["attack/loss_final"])
    key = alignment_entry(cfg)
    assert (shared_cache / "aligned" / key / "meta.json").is_file()
    plain = alignment_entry(compose_config(["model=toy", *FAST, "align.max_steps=60"], tmp_path / "x", shared_cache))
    if name in ALIGN_STAGE:
        assert key != plain  # its own alignment, cached separately from plain SFT's
        assert status["defenses"] == {"align": name}
    else:
        assert key == plain  # fine-tuning-stage defenses share the plain alignment
        assert status["defenses"] == ({} if name == "none" else {"attack": name})


@pytest.mark.slow
@needs_smollm2
@pytest.mark.parametrize("name", DEFENSES)
def test_every_defense_runs_a_whole_job_on_smollm2(name, tmp_path, shared_cache):
    # Small alignment pools with short self-distilled answers: self-distillation and the passes over
    # the whole alignment pool (EWC's Fisher, RepNoise's harmful set), not training, were most of each
    # job's time, and this test only shows that each defense runs on the real model.
    small_alignment = [
        *("align.max_steps=2", "align.num_harmful=8", "align.num_benign=8", "align.self_max_new_tokens=8"),
        *("data.harmful.align=16", "data.benign.eval=224"),  # 16 harmful and 16 benign alignment pairs
    ]
    overrides = ["model=smollm2_135m", *FAST, f"defense={name}", *small_alignment, "eval.max_new_tokens=8"]
    _, metrics, status = run(overrides, tmp_path, shared_cache)
    assert status["status"] == "ok"
    assert math.isfinite(metrics["attack/loss_final"]) and 0.0 <= metrics["eval/harmful_score"] <= 100.0
