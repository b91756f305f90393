"""On a CUDA device: the toy job in fp32 and in bf16 mixed precision, the continuous backend, SBR's step.

Marked ``gpu``: skipped, with the reason, where ``torch.cuda.is_available()`` is false (tests/conftest.py).
On a GPU machine: ``pytest -m gpu``.
"""

from __future__ import annotations

import copy
import math

import pytest
from helpers import PerturbAtTrainStart, fit_steps, fresh_lora, lively_toy, read_json

from sbr_bench.data.pools import Pair
from sbr_bench.defenses.sbr import SBR
from sbr_bench.evaluation.backends import ContinuousBackend, HFBackend, Request
from sbr_bench.job import run_job
from sbr_bench.training.fit import make_loader
from sbr_bench.training.module import Optim, SafetyModule

pytestmark = pytest.mark.gpu

# The smallest whole job (alignment from scratch, attack, evaluation, diagnostics) on one CUDA GPU.
GPU_JOB = ["model=toy", "debug=fast", "logger=none", "trainer=gpu", "trainer.enable_progress_bar=false"]
SCORES = ("align/harmful_score", "align/finetune_acc", "eval/harmful_score", "eval/finetune_acc", "eval/over_refusal")


def run_toy_job(make_cfg, folder, *overrides: str) -> dict:
    """The toy job with ``overrides``; its metrics, once its status says it finished."""
    run_job(make_cfg([*GPU_JOB, *overrides], output_dir=folder))
    assert read_json(folder, "status.json")["status"] == "ok"
    return read_json(folder)


def numbers(metrics: dict) -> dict[str, float]:
    """Every number of metrics.json, those of its per-step lists (diagnostics, curves) included."""
    flat = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    for key, rows in metrics.items():
        if isinstance(rows, list):
            for i, row in enumerate(r for r in rows if isinstance(r, dict)):
                flat |= {f"{key}[{i}].{k}": v for k, v in row.items() if isinstance(v, int | float)}
    return flat


def test_toy_job_in_fp32_on_the_gpu_finishes_with_finite_metrics(make_cfg, tmp_path):
    metrics = run_toy_job(make_cfg, tmp_path / "fp32", "trainer.precision=32-true")
    values = numbers(metrics)
    assert set(SCORES) <= values.keys() and "attack/loss_final" in values
    assert all(math.isfinite(v) for v in values.values()), {k: v for k, v in values.items() if not math.isfinite(v)}


def test_toy_job_in_bf16_mixed_precision_scores_within_0_and_100(make_cfg, tmp_path):
    """trainer=gpu as shipped: bf16 autocast over fp32 weights (conf/trainer/gpu.yaml)."""
    metrics = run_toy_job(make_cfg, tmp_path / "bf16")
    values = numbers(metrics)
    assert all(math.isfinite(v) for v in values.values()), {k: v for k, v in values.items() if not math.isfinite(v)}
    for key in SCORES:
        assert 0.0 <= metrics[key] <= 100.0, (key, metrics[key])


def backend_requests(pools, n: int = 8) -> list[Request]:
    return [
        Request(pools.eval_harmful[:n], 12, "harmful prompts"),
        Request([p.prompt for p in pools.task_test[:n]], 3, "task prompts"),
    ]


def answers_on(device: str, toy, pools):
    """(hf answers, continuous answers) of the lively toy (tests/helpers.py) on ``device``."""
    model, tokenizer = lively_toy(*toy)
    model.to(device)
    requests = backend_requests(pools)
    static = HFBackend(batch_size=4)(model, tokenizer, requests)
    continuous = ContinuousBackend(page_size=16, max_batch_tokens=64)(model, tokenizer, requests)
    return static, continuous


def test_continuous_batching_on_cuda_gives_the_static_batches_answers(toy, pools):
    static, continuous = answers_on("cuda", toy, pools)
    (answers, truncated), _ = static
    assert all(answers) and any(truncated) and not all(truncated)  # answers that can differ
    assert continuous == static


def sbr_step_losses(model, tokenizer, pools, accelerator: str) -> dict[str, float]:
    """The losses SafetyModule logs for one SBR training step on one batch of four harmful pairs.

    LoRA B moves after SBR's setup (as attack steps would): the SBR term is not 0.
    """
    pairs = [Pair(p.prompt, p.response) for p in pools.attack_harmful[:4]]
    loader = make_loader(tokenizer, pairs, max_length=128, batch_size=4, seed=0)
    module = SafetyModule(model, tokenizer, SBR(lam=1.0, num_anchors=4), Optim(lr=1e-2), stage="attack", pools=pools)
    trainer = fit_steps(module, loader, 1, accelerator=accelerator, callbacks=[PerturbAtTrainStart()])
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_sbr_training_step_on_cuda_gives_the_cpu_loss(toy, pools):
    model, tokenizer = toy
    start = fresh_lora(model)
    cpu = sbr_step_losses(copy.deepcopy(start), tokenizer, pools, "cpu")
    cuda = sbr_step_losses(copy.deepcopy(start), tokenizer, pools, "gpu")
    assert {"attack/loss", "attack/loss_task", "attack/loss_sbr"} <= cpu.keys()
    assert cpu["attack/loss_sbr"] > 0
    assert cuda.keys() == cpu.keys()
    for key, value in cpu.items():
        assert cuda[key] == pytest.approx(value, abs=1e-4), key
