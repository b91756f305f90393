"""The bundled data: sizes, categories, disjoint pools, and answers that the judge reads right."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from sbr_bench.data.bundled import bundled_file, load_pools, read_jsonl
from sbr_bench.errors import ConfigError
from sbr_bench.judges.keyword import is_refusal


def records(name):
    return [json.loads(line) for line in bundled_file(name).read_text().splitlines()]


def norm(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def test_sizes_and_categories():
    harmful, benign, sentiment = records("harmful.jsonl"), records("benign.jsonl"), records("sentiment.jsonl")
    assert len(harmful) >= 300 and len(benign) >= 150 and len(sentiment) >= 1000
    categories = Counter(r["category"] for r in harmful)
    assert len(categories) >= 10 and min(categories.values()) >= 20
    labels = Counter(r["label"] for r in sentiment)
    assert set(labels) == {"positive", "negative"} and abs(labels["positive"] - labels["negative"]) <= 10


def test_ids_and_prompts_are_unique_and_ascii():
    for name, field in (("harmful.jsonl", "prompt"), ("benign.jsonl", "prompt"), ("sentiment.jsonl", "sentence")):
        rows = records(name)
        assert len({r["id"] for r in rows}) == len(rows), name
        assert len({norm(r[field]) for r in rows}) == len(rows), name
        assert all(line.isascii() for line in bundled_file(name).read_text().splitlines()), name


def test_refusals_read_as_refusals_and_answers_do_not():
    """The keyword judge must read the training targets the way they are meant."""
    for r in records("harmful.jsonl"):
        assert is_refusal(r["refusal"]), r["id"]
        assert not is_refusal(r["compliant"]), r["id"]
    for r in records("benign.jsonl"):
        assert not is_refusal(r["response"]), r["id"]


def test_pools_are_disjoint_and_large_enough(pools):
    harmful_pools = {
        "align_harmful": {norm(p.prompt) for p in pools.align_harmful},
        "attack_harmful": {norm(p.prompt) for p in pools.attack_harmful},
        "anchors": {norm(p) for p in pools.anchors},
        "eval_harmful": {norm(p) for p in pools.eval_harmful},
    }
    benign_pools = {
        "align_benign": {norm(p.prompt) for p in pools.align_benign},
        "eval_benign": {norm(p) for p in pools.eval_benign},
    }
    task_pools = {
        "task_train": {norm(p.prompt) for p in pools.task_train},
        "task_test": {norm(p.prompt) for p in pools.task_test},
    }
    every = {**harmful_pools, **benign_pools, **task_pools}
    names = sorted(every)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not every[a] & every[b], f"{a} and {b} share prompts"
    # No pool lost or duplicated an item: the pools partition the files.
    assert sum(len(v) for v in harmful_pools.values()) == len(records("harmful.jsonl"))
    assert sum(len(v) for v in benign_pools.values()) == len(records("benign.jsonl"))
    assert sum(len(v) for v in task_pools.values()) == len(records("sentiment.jsonl"))
    assert len(pools.eval_harmful) >= 100 and len(pools.eval_benign) >= 100


def test_pools_are_deterministic_and_stratified(pools):
    again = load_pools()
    assert again == pools
    assert load_pools(split_seed=1).eval_harmful != pools.eval_harmful
    per_category = Counter(r["category"] for r in records("harmful.jsonl") if r["prompt"] in set(pools.eval_harmful))
    assert max(per_category.values()) - min(per_category.values()) <= 1  # 100 over 12 categories: 8 or 9 each
    assert Counter(p.response for p in pools.task_test) == {"positive": 100, "negative": 100}


def test_pool_sizes_larger_than_the_data_fail_clearly():
    with pytest.raises(ConfigError, match=r"the harmful pools ask for 1120 items but only 360 exist"):
        load_pools(harmful={"eval": 1000, "anchors": 20, "align": 100})


def test_broken_data_file_names_file_and_record(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\nnot json\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: not valid JSON"):
        read_jsonl(bad, ("prompt",))
    bad.write_text('{"prompt": "a"}\n{"other": 1}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: record lacks field\(s\) prompt"):
        read_jsonl(bad, ("prompt",))
