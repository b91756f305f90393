"""The alignment stage: safety SFT on refusals and helpful answers, cached on disk.

The provider's safety alignment (the HFT protocol's first stage): supervised fine-tuning on the
alignment pools - harmful prompts answered with refusals, benign prompts answered helpfully, so
the model learns to refuse without refusing everything. Alignment-stage defenses (Vaccine,
RepNoise, Booster) act here through the same module.

The result is cached under ``<cache_dir>/aligned/<key>``, where the key hashes everything that
determines the aligned weights: the model config, the alignment config, the alignment-stage
defense, and the alignment examples themselves. A sweep over attack settings therefore aligns
once. A LoRA alignment is stored as its adapter (never a copy of the base weights) and merged into
the weights when loaded, exactly as after training, so a cached and a fresh alignment give the same
model. The entries are written and locked by ``sbr_bench.cache``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from sbr_bench.cache import cached_json, digest, load_weights, model_identity, store
from sbr_bench.context import JobContext
from sbr_bench.data.pools import Pair, Pools
from sbr_bench.evaluation.generate import greedy_generate
from sbr_bench.io import exclusive, read_json
from sbr_bench.models.adapters import apply_adapter, merge_adapter
from sbr_bench.settings import AlignSettings
from sbr_bench.training.fit import fit, stage_loaders
from sbr_bench.training.module import Optim, SafetyModule

log = logging.getLogger(__name__)

# Bump when the alignment code changes what it produces for the same settings: old entries are
# then simply not found any more.
ALIGN_FORMAT = 1


def alignment_examples(pools: Pools, settings: AlignSettings) -> list[Pair]:
    """Refusal pairs, helpful pairs and ``num_task`` task pairs for alignment (null = the whole pool)."""
    return (
        pools.align_harmful[: settings.num_harmful]
        + pools.align_benign[: settings.num_benign]
        + pools.task_train[: settings.num_task]
    )


def self_distilled(
    model, tokenizer, pairs: list[Pair], max_new_tokens: int, cache_dir: Path, model_cfg: dict
) -> list[Pair]:
    """The same prompts answered by the model itself (greedy): targets that keep its own helpfulness.

    The answers depend only on the base model, the prompts and the length, not on the alignment
    settings or defense, so they are generated once and cached: every alignment-stage defense
    reuses them.
    """
    prompts = [p.prompt for p in pairs]
    name = digest({"model": model_identity(model_cfg), "prompts": prompts, "max_new_tokens": max_new_tokens})
    answers = cached_json(
        Path(cache_dir) / "distilled" / f"{name}.json",
        lambda: greedy_generate(model, tokenizer, prompts, max_new_tokens, desc="self-distilled targets"),
    )
    return [Pair(p.prompt, a, p.category) for p, a in zip(pairs, answers, strict=True)]


def training_environment(tokenizer, trainer_cfg: dict, device: str) -> dict:
    """What changes trained weights besides the settings: precision, device, library versions, template.

    The same settings trained in bf16 on a GPU and in fp32 on a CPU, or under another torch,
    transformers or peft release, give other weights; the chat template decides the training text.
    (The model revision is part of the model config, hence of the key already.)
    """
    import peft
    import torch
    import transformers

    template = getattr(tokenizer, "chat_template", None) or ""
    return {
        "precision": str(trainer_cfg.get("precision")),
        "device": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "chat_template": hashlib.sha256(template.encode()).hexdigest()[:16],
    }


def alignment_key(
    model_cfg: dict, align_cfg: dict, defense_cfg: dict | None, examples: list[Pair], environment: dict
) -> str:
    """Hash of everything that determines the aligned weights (``align_cfg``: the resolved ``align`` node)."""
    return digest(
        {
            "format": ALIGN_FORMAT,
            "model": model_identity(model_cfg),
            "align": align_cfg,
            "defense": defense_cfg,
            "data": digest([[p.prompt, p.response] for p in examples]),
            "environment": environment,
        }
    )


def align(
    model,
    context: JobContext,
    examples: list[Pair],
    settings: AlignSettings,
    defense,
    key: str,
    merge: bool = True,
) -> tuple[Any, dict[str, float]]:
    """The aligned model (from the cache, or trained now and cached) and the stage's metrics.

    ``merge=False`` returns a LoRA alignment unmerged, its adapter trainable (``adapter=continue``);
    the cache entry is the same either way.

    ``align/optimizer_steps`` is the steps the stored alignment was trained for (read from the entry
    when it is reused; absent for entries written before it was recorded).
    """
    entry = context.cache_dir / "aligned" / key
    if not (entry / "meta.json").is_file():
        with exclusive(entry, "the same alignment"):
            if not (entry / "meta.json").is_file():  # another job may have stored it while we waited
                return _train(model, context, examples, settings, defense, entry, merge)
    log.info("alignment: reusing %s", entry)
    metrics = {"align/cached": 1.0, "time/align_s": 0.0}
    steps = read_json(entry / "meta.json").get("optimizer_steps")
    if steps is not None:
        metrics["align/optimizer_steps"] = float(steps)
    return load_weights(model, settings.adapter.kind, entry, merge), metrics


def _train(
    model, context: JobContext, examples: list[Pair], settings: AlignSettings, defense, entry: Path, merge: bool
):
    """Train the alignment and store it as ``entry``."""
    key, adapter_kind = entry.name, settings.adapter.kind
    started = time.perf_counter()
    if settings.benign_targets == "self":
        benign = set(context.pools.align_benign)
        distilled = iter(
            self_distilled(
                model,
                context.tokenizer,
                [p for p in examples if p in benign],
                settings.self_max_new_tokens,
                context.cache_dir,
                context.model_cfg,
            )
        )
        examples = [next(distilled) if p in benign else p for p in examples]
    log.info("alignment: training on %d examples (cache entry %s)", len(examples), key)
    pl.seed_everything(settings.seed, workers=True, verbose=False)
    trainable = apply_adapter(model, **settings.adapter.model_dump(exclude_none=True), seed=settings.seed)
    loader, streams = stage_loaders(
        defense, context.pools, examples, context.tokenizer, settings.max_length, settings.batch_size, settings.seed
    )
    optim = Optim(**settings.optim.model_dump())
    module = SafetyModule(
        trainable, context.tokenizer, defense, optim, stage="align", pools=context.pools, streams=streams
    )
    module.defense_start = settings.defense_start
    fit(
        module,
        loader,
        context.trainer_cfg,
        context.logger,
        str(context.output_dir),
        epochs=settings.epochs,
        max_steps=settings.max_steps,
        grad_accum=settings.grad_accum,
    )
    seconds = time.perf_counter() - started
    steps = int(module.trainer.global_step)
    meta = {"key": key, "align": settings.model_dump(), "examples": len(examples), "seconds": seconds}
    store(trainable, adapter_kind, entry, {**meta, "optimizer_steps": steps})
    metrics = {"align/cached": 0.0, "time/align_s": seconds, "align/optimizer_steps": float(steps)}
    return (merge_adapter(trainable) if merge else trainable), metrics
