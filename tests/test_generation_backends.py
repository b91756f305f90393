"""eval.backend: hf, continuous and vllm give the same records; the backend is in the evaluation's cache key.

vLLM itself needs a GPU, so its worker runs here against ``tests/fake_vllm``: a stand-in package with
vllm's entry points, answered by transformers. That covers everything this project writes (the
checkpoint, merged or as an adapter, the request, the engine's arguments, the child process, the
decoding of its tokens); vLLM's own kernels are not exercised.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from helpers import generations, lively_toy

from sbr_bench.errors import ConfigError
from sbr_bench.evaluation import backends
from sbr_bench.evaluation.backends import ContinuousBackend, HFBackend, Request, VLLMBackend

FAKE_VLLM = Path(__file__).resolve().parent / "fake_vllm"


@pytest.fixture(scope="module")
def lively(toy):
    """``lively_toy``: answers of every length, some ending by themselves and some cut at the limit."""
    return lively_toy(*toy)


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    """vllm importable here and in child processes; returns the file the stand-in logs its arguments to."""
    log = tmp_path / "vllm_calls.jsonl"
    monkeypatch.syspath_prepend(str(FAKE_VLLM))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAKE_VLLM), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    return log


def requests(pools, n: int = 8) -> list[Request]:
    return [
        Request(pools.eval_harmful[:n], 12, "harmful prompts"),
        Request([p.prompt for p in pools.task_test[:n]], 3, "task prompts"),
        Request([], 5, "an empty pool"),
    ]


def test_the_lively_toy_gives_answers_that_can_differ(lively, pools):
    (answers, truncated), (task, _), _ = HFBackend(batch_size=4)(*lively, requests(pools))
    assert len(set(answers)) == len(answers) and all(answers)
    assert any(truncated) and not all(truncated)
    assert len(set(task)) > 1


def test_continuous_batching_gives_the_static_batches_answers(lively, pools):
    expected = HFBackend(batch_size=4)(*lively, requests(pools))
    model = lively[0]
    for training in (False, True):  # generation runs in eval mode; the caller's mode comes back
        model.train(training)
        assert ContinuousBackend(page_size=16, max_batch_tokens=64)(*lively, requests(pools)) == expected
        assert model.training is training
    model.eval()


def test_continuous_cache_is_sized_from_the_prompts():
    backend = ContinuousBackend(page_size=8)
    assert backend.blocks([[1] * 5, [1] * 12], max_new_tokens=4) == 2 + 2  # ceil(9 / 8) + ceil(16 / 8)
    assert ContinuousBackend(page_size=8, num_blocks=7).blocks([[1] * 5], 4) == 7


def test_the_merged_checkpoint_holds_merge_and_unloads_weights_and_leaves_the_model_as_it_was(lively):
    model, _ = lively
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = backends.merged_state_dict(model)
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    assert merged.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(merged[key], value, rtol=0, atol=1e-7, msg=key)
    unadapted = backends.unadapted_state_dict(model)  # the weights under the LoRA
    assert unadapted.keys() == merged.keys()
    assert all(not torch.equal(merged[k], unadapted[k]) for k in merged if "q_proj" in k)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("weights", ["merged", "adapter"])
def test_vllm_worker_gives_the_static_batches_answers(lively, pools, fake_vllm, weights):
    expected = HFBackend(batch_size=4)(*lively, requests(pools))
    backend = VLLMBackend(python=sys.executable, weights=weights, gpu_memory_utilization=0.5, seed=3)
    backend.check()
    assert backend(*lively, requests(pools)) == expected

    engine, sampling = (json.loads(line) for line in fake_vllm.read_text().splitlines())
    lora = weights == "adapter"
    assert {k: v for k, v in engine["engine"].items() if k not in ("model", "tokenizer")} == {
        "dtype": "auto",
        "gpu_memory_utilization": 0.5,
        "enforce_eager": False,
        "seed": 3,
        **({"enable_lora": True, "max_lora_rank": 4, "max_loras": 1} if lora else {}),
    }
    assert (sampling["lora"] is not None) == lora
    eos = lively[1].eos_token_id
    limits = [12] * 8 + [3] * 8
    assert sampling["sampling"] == [
        {"temperature": 0.0, "max_tokens": n, "stop_token_ids": [eos], "detokenize": False} for n in limits
    ]


def test_vllm_request_and_command(lively, pools, tmp_path):
    backend = VLLMBackend(python="/envs/vllm/bin/python", max_model_len=2048)
    request = backend.write_request(*lively, requests(pools, n=2), tmp_path)
    assert backend.command(tmp_path) == ["/envs/vllm/bin/python", str(backends.WORKER), str(tmp_path / "request.json")]
    assert json.loads((tmp_path / "request.json").read_text()) == request
    assert request["engine"]["max_model_len"] == 2048 and request["lora"] is None
    assert [len(r["prompts"]) for r in request["requests"]] == [2, 2, 0]
    assert (tmp_path / "model" / "config.json").is_file() and (tmp_path / "model" / "tokenizer.json").is_file()
    assert not (tmp_path / "lora").exists()


def test_vllm_worker_imports_nothing_of_this_project():
    import ast

    tree = ast.parse(backends.WORKER.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"__future__", "json", "sys", "pathlib", "vllm", "vllm.lora.request"}  # vllm's environment


def test_vllm_backend_checks_its_interpreter_before_any_model_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name, *a: None)
    missing = "eval.backend=vllm needs the vllm package: pip install -e '.[vllm]'"
    with pytest.raises(ConfigError, match=re.escape(missing)):
        VLLMBackend().check()
    with pytest.raises(ConfigError, match=re.escape("eval.vllm.python=/no/python is not a file")):
        VLLMBackend(python="/no/python").check()
    monkeypatch.undo()
    without_vllm = tmp_path / "python"  # an interpreter that cannot import vllm, whatever this one has
    without_vllm.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
    without_vllm.chmod(0o755)
    with pytest.raises(ConfigError, match=re.escape(f"eval.vllm.python={without_vllm} cannot import vllm")):
        VLLMBackend(python=str(without_vllm)).check()


def test_the_cache_key_holds_the_backend_except_hf(make_cfg):
    from sbr_bench.pipeline import resolved

    def part(*overrides):
        return backends.cache_key_part(resolved(make_cfg(["model=toy", *overrides]).eval))

    assert part() == {}
    assert part("eval.continuous.page_size=64") == {}  # hf: the other backends' options do not count
    assert part("eval.backend=continuous") == {
        "backend": "continuous",
        "backend_options": {"page_size": 128, "max_batch_tokens": 2048, "num_blocks": None},
    }
    assert part("eval.backend=continuous") != part("eval.backend=continuous", "eval.continuous.page_size=64")
    assert part("eval.backend=vllm")["backend"] == "vllm"


def test_each_backend_runs_the_job_to_the_same_records(make_cfg, tmp_path, shared_cache, fake_vllm):
    from sbr_bench import pipeline

    def job(backend: str, *extra: str) -> tuple[dict, list[dict], dict]:
        folder = tmp_path / backend
        cfg = make_cfg(["model=toy", "debug=fast", "logger=none", f"eval.backend={backend}", *extra], folder)
        pipeline.run(cfg)
        records = generations(folder)
        settings = json.loads((folder / "settings.json").read_text())
        return json.loads((folder / "metrics.json").read_text()), records, settings

    hf_metrics, hf_records, hf_settings = job("hf")
    aligned = {p.parent for p in shared_cache.rglob("before_attack-*.json")}
    evaluations = {p.name for p in shared_cache.rglob("before_attack-*.json")}
    for backend, extra in [("continuous", ()), ("vllm", (f"eval.vllm.python={sys.executable}",))]:
        metrics, records, settings = job(backend, *extra)
        assert [(r["stage"], r["pool"], r["response"], r.get("truncated")) for r in records] == [
            (r["stage"], r["pool"], r["response"], r.get("truncated")) for r in hf_records
        ]
        same = [k for k in hf_metrics if k.startswith(("eval/", "align/")) and k != "align/cached"]
        assert {k: metrics[k] for k in same} == {k: hf_metrics[k] for k in same}
        assert settings["eval"]["backend"]["name"] == backend and "options" in settings["eval"]["backend"]
        new = {p.name for p in shared_cache.rglob("before_attack-*.json")} - evaluations
        assert len(new) == 1, "each backend scores the aligned model under its own cache key"
        evaluations |= new
    assert hf_settings["eval"]["backend"] == {"name": "hf"}
    assert {p.parent for p in shared_cache.rglob("before_attack-*.json")} == aligned  # one alignment for all
