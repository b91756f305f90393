"""The pipeline options the paper protocols need, run end to end on the toy model.

- ``adapter=continue``: the attack trains the alignment's own LoRA, unmerged (Booster's protocol);
- constrained SFT's optimizer (AdamW beta1 = 0.5, 10 warmup steps) reaching the optimizer;
- ``attack.ce_normalization=window``: one token mean over the accumulation window, against an
  independent computation of that mean's gradient.

RepNoise's ``mask=paired_diff`` on hub-layout data runs in tests/test_data_sources.py (its fixtures).
"""

from __future__ import annotations

import json

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from helpers import compose_config
from peft import PeftModel

from sbr_bench.data.formatting import IGNORE_INDEX
from sbr_bench.data.pools import Pair
from sbr_bench.defenses.none import NoDefense
from sbr_bench.job import run_job
from sbr_bench.training.fit import fit, make_loader
from sbr_bench.training.module import Optim, SafetyModule

FAST = ["model=toy", "debug=fast", "logger=none"]
# The toy model's own alignment is a full fine-tuning from scratch; a LoRA alignment of it gives
# the attack an adapter to continue.
LORA_ALIGN = ["align=sft", "align.max_steps=4"]


def run(overrides, tmp_path, cache) -> tuple[dict, dict]:
    cfg = compose_config(overrides, tmp_path / "job", cache)
    run_job(cfg)
    folder = tmp_path / "job"
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "ok", status
    return json.loads((folder / "metrics.json").read_text()), json.loads((folder / "settings.json").read_text())


def test_booster_with_the_continued_adapter_trains_the_alignment_lora(tmp_path, shared_cache):
    from safetensors.torch import load_file

    overrides = [*FAST, *LORA_ALIGN, "defense=booster", "adapter=continue", "attack.keep_adapter=true"]
    metrics, ran = run(overrides, tmp_path, shared_cache)
    assert ran["attack"]["adapter"]["kind"] == "continue" and ran["attack"]["optimizer_steps"] > 0
    assert 0 <= metrics["eval/harmful_score"] <= 100
    # The attack's adapter is the alignment's (its r / alpha / targets), trained further, not a new one.
    saved = json.loads((tmp_path / "job" / "adapter" / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"]) == (16, 32)  # conf/align/sft.yaml (a fresh adapter: 16 / 16)
    entry = shared_cache / "aligned" / ran["align"]["cache_key"] / "adapter" / "adapter_model.safetensors"
    aligned, attacked = load_file(entry), load_file(tmp_path / "job" / "adapter" / "adapter_model.safetensors")
    assert aligned.keys() == attacked.keys()
    assert any(not torch.equal(aligned[k], attacked[k]) for k in aligned)


def test_the_continued_adapter_is_the_cached_alignment_unmerged(tmp_path, shared_cache):
    from sbr_bench import cache
    from sbr_bench.models.adapters import apply_adapter
    from sbr_bench.models.toy import load

    _, ran = run([*FAST, *LORA_ALIGN, "adapter=continue", "attack.epochs=1"], tmp_path, shared_cache)
    model, _ = load()
    entry = shared_cache / "aligned" / ran["align"]["cache_key"]
    unmerged = cache.load_weights(model, "lora", entry, merge=False)
    assert isinstance(unmerged, PeftModel)
    trainable = apply_adapter(unmerged, kind="continue")
    names = [n for n, p in trainable.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    merged = cache.load_weights(load()[0], "lora", entry, merge=True)
    ids = torch.tensor([[1, 5, 9, 12, 3]])
    with torch.no_grad():
        assert torch.allclose(trainable(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)


def test_constrained_sft_runs_with_its_papers_optimizer(tmp_path, shared_cache):
    metrics, ran = run([*FAST, "defense=constrained_sft", "attack.epochs=2"], tmp_path, shared_cache)
    assert ran["attack"]["betas"] == [0.5, 0.999]  # conf/protocol/constrained_sft.yaml
    assert ran["attack"]["warmup_steps"] == 10
    assert 0 <= metrics["eval/harmful_score"] <= 100


def test_a_job_accumulating_two_micro_batches_normalises_over_the_window(tmp_path, shared_cache):
    metrics, ran = run([*FAST, "attack.grad_accum=2", "attack.batch_size=4"], tmp_path, shared_cache)
    assert ran["attack"]["ce_normalization"] == "window"
    assert (ran["attack"]["batch_size"], ran["attack"]["grad_accum"]) == (4, 2)
    assert ran["attack"]["optimizer_steps"] == 2  # 16 samples / 4 per micro-batch / 2 per step
    assert 0 <= metrics["eval/harmful_score"] <= 100


def test_warmup_steps_ramp_the_learning_rate(toy):
    model, tokenizer = toy
    pairs = [Pair(f"prompt {i}", f"answer {i}") for i in range(12)]
    loader = make_loader(tokenizer, pairs, 64, 4, seed=0)
    optim = Optim(lr=1.0, adam_beta1=0.5, adam_beta2=0.9, scheduler="constant", warmup_steps=2)
    module = SafetyModule(_copy(model), tokenizer, NoDefense(), optim, stage="attack")
    lrs = []

    class LR(pl.Callback):  # the lr and betas the optimizer steps with
        def on_train_batch_start(self, trainer, *args):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
            assert trainer.optimizers[0].param_groups[0]["betas"] == (0.5, 0.9)

    fit(module, loader, {"accelerator": "cpu", "enable_progress_bar": False}, None, "", epochs=1, callbacks=[LR()])
    assert lrs == [0.0, 0.5, 1.0]


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_window_normalisation_is_the_token_mean_over_the_window(toy):
    """Two micro-batches per step: the accumulated gradient is that of sum(token CE) / window tokens."""
    model, tokenizer = toy
    # Answers of very different lengths: a per-micro-batch mean would weigh their tokens differently.
    pairs = [Pair(f"question {i}", "yes" if i % 2 else "a long answer " * (1 + i)) for i in range(8)]
    window = make_loader(tokenizer, pairs, 128, 2, seed=3, window=2)
    plain = make_loader(tokenizer, pairs, 128, 2, seed=3)
    batches = list(window)
    for epoch in range(3):  # the same shuffle as the plain loader, epoch after epoch
        for a, b in zip(batches if epoch == 0 else window, plain, strict=True):
            assert torch.equal(a["input_ids"], b["input_ids"])
    module = SafetyModule(_copy(model), tokenizer, NoDefense(), Optim(lr=1e-3), stage="attack")
    module.grad_accum = 2
    params = module.trainable_parameters()
    first, second = batches[0], batches[1]
    accumulated = [torch.zeros_like(p) for p in params]
    for batch in (first, second):  # what the accumulation does: backward of loss / grad_accum
        grads = torch.autograd.grad(module.task_loss(batch) / 2, params, allow_unused=True, materialize_grads=True)
        accumulated = [a + g for a, g in zip(accumulated, grads, strict=True)]
    # Independently: every answer token of the window in one batch-free sum, divided by their count.
    total, count = 0.0, 0
    for batch in (first, second):
        logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE_INDEX
        total = total + F.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="sum")
        count += int(keep.sum())
    assert int(first["window_tokens"]) == int(second["window_tokens"]) == count
    expected = torch.autograd.grad(total / count, params, allow_unused=True, materialize_grads=True)
    for a, e in zip(accumulated, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6)
    # ... which the micro-batch mean is not, with these lengths.
    mean = [torch.zeros_like(p) for p in params]
    for batch in (first, second):
        plain_batch = {k: v for k, v in batch.items() if k != "window_tokens"}
        grads = torch.autograd.grad(
            module.task_loss(plain_batch) / 2, params, allow_unused=True, materialize_grads=True
        )
        mean = [m + g for m, g in zip(mean, grads, strict=True)]
    assert not all(torch.allclose(m, e, rtol=1e-3) for m, e in zip(mean, expected, strict=True))
