"""Model judges hold their weights for one pass only: none are alive while the model under test trains."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
from helpers import JUDGED_PAIRS

from sbr_bench.judges.beaverdam import BeaverDamJudge


def test_the_weights_are_gone_after_a_pass_and_load_again_for_the_next(beaverdam_dir):
    judge = BeaverDamJudge(model=str(beaverdam_dir), device="cpu")
    prompts, responses = [p for p, _ in JUDGED_PAIRS], [r for _, r in JUDGED_PAIRS]
    first = judge.judge(prompts, responses)
    assert judge._model is None and judge._tokenizer is None
    assert judge.judge(prompts, responses) == first  # loaded again, same verdicts

    model, _ = judge.load()
    alive = weakref.ref(model)
    del model
    judge.judge(prompts, responses)
    gc.collect()
    assert alive() is None


def test_keep_loaded_keeps_them(beaverdam_dir):
    judge = BeaverDamJudge(model=str(beaverdam_dir), device="cpu", keep_loaded=True)
    judge.judge(["a"], ["sure"])
    assert judge._model is not None


@pytest.mark.parametrize("keep_loaded", [False, True])
def test_no_judge_weights_are_alive_during_the_attack(beaverdam_dir, tmp_path, shared_cache, monkeypatch, keep_loaded):
    """A toy job judged by BeaverDam: at the start of the attack, the judge's model is gone (unless kept)."""
    from helpers import compose_config

    from sbr_bench import pipeline

    loaded: list[weakref.ref] = []
    original_load, original_fit = BeaverDamJudge.load, pipeline.fit

    def load(self):
        model, tokenizer = original_load(self)
        if not loaded or loaded[-1]() is not model:
            loaded.append(weakref.ref(model))
        return model, tokenizer

    seen_during_attack = []

    def fit(module, *args, **kwargs):
        if module.stage == "attack":
            gc.collect()
            seen_during_attack.append([ref() is not None for ref in loaded])
        return original_fit(module, *args, **kwargs)

    monkeypatch.setattr(BeaverDamJudge, "load", load)
    monkeypatch.setattr(pipeline, "fit", fit)
    overrides = ["model=toy", "debug=fast", "logger=none", "judge=beaverdam", f"judge.model={beaverdam_dir}"]
    overrides += ["judge.device=cpu", f"judge.keep_loaded={str(keep_loaded).lower()}", "eval.before_attack=true"]
    cfg = compose_config(overrides, tmp_path / "job", shared_cache)
    metrics = pipeline.run(cfg)
    assert loaded, "the judge scored the aligned model before the attack"
    assert seen_during_attack == [[keep_loaded] * len(seen_during_attack[0])]
    assert 0.0 <= metrics["eval/harmful_score"] <= 100.0
    assert (
        json.loads((tmp_path / "job" / "metrics.json").read_text())["eval/harmful_score"]
        == metrics["eval/harmful_score"]
    )
