"""One benchmark job: align -> attack -> evaluate -> record.

::

    model -> align     safety SFT (cached by a hash of what determines it); skipped with align=none
          -> evaluate  harmful score etc. of the aligned model, before the attack (cached too)
          -> attack    the user's fine-tuning on n samples, a fraction p harmful, under the defense
          -> repair    post-fine-tuning defenses (none built in yet)
          -> evaluate  harmful score, fine-tune accuracy, over-refusal
          -> record    metrics.json, generations.jsonl (status.json is written by sbr_bench.job)

Every value comes from the composed Hydra config; nothing here branches on a defense's name.
Each defense acts in the stage it names; ``defense`` and the optional ``stack`` slot
(``defense@stack=<option>``) stack two defenses of different stages in one job, for example
``defense=sbr defense@stack=vaccine`` (Vaccine alignment, SBR during the attack).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sbr_bench import alignment, cache, runtime, search
from sbr_bench.attacks import probes
from sbr_bench.attacks.attack_set import attack_set_from_config, num_harmful
from sbr_bench.attacks.distance_cap import DistanceCap
from sbr_bench.context import JobContext
from sbr_bench.data.formatting import apply_prompt_format, with_prompt_format
from sbr_bench.defenses.base import STAGES, Defense
from sbr_bench.defenses.none import NoDefense
from sbr_bench.errors import ConfigError
from sbr_bench.evaluation import backends
from sbr_bench.evaluation.during_attack import attack_monitors, monitor_results
from sbr_bench.evaluation.evaluate import evaluate
from sbr_bench.evaluation.records import describe
from sbr_bench.io import write_json_atomic, write_jsonl_atomic
from sbr_bench.judges.base import check_judge
from sbr_bench.models.adapters import apply_adapter
from sbr_bench.settings import AlignSettings, AttackSettings, EvalSettings, validate_job
from sbr_bench.training.fit import fit, stage_loaders
from sbr_bench.training.module import Optim, SafetyModule
from sbr_bench.wandb_run import log_generations, make_logger, run_name

log = logging.getLogger(__name__)


def resolved(node) -> Any:
    """A resolved plain-Python copy of a config node (None stays None)."""
    return OmegaConf.to_container(node, resolve=True) if node is not None else None


def eval_device(trainer_cfg: dict) -> torch.device:
    """Where evaluation runs: the device the Trainer trains on."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but this machine has no CUDA device; use trainer=cpu or trainer=auto"
        )
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


DEFENSE_SLOTS = ("defense", "stack")


def stage_defenses(cfg: DictConfig) -> dict[str, tuple[Defense, dict | None]]:
    """The defense of every stage with its resolved config (``NoDefense`` and ``None`` where none acts)."""
    chosen: dict[str, tuple[str, Defense, dict]] = {}
    for slot in DEFENSE_SLOTS:
        node = cfg.get(slot)
        if node is None:
            continue
        defense = instantiate(node)
        if not isinstance(defense, Defense):
            raise ConfigError(f"{slot}: {node.get('_target_')} is not a sbr_bench.defenses.base.Defense subclass")
        if isinstance(defense, NoDefense):
            continue
        if defense.stage not in STAGES:
            raise ConfigError(f"{slot}: stage {defense.stage!r} is not one of: {', '.join(STAGES)}")
        if defense.stage in chosen:
            other = chosen[defense.stage][0]
            raise ConfigError(
                f"{other} and {slot} both act in the {defense.stage} stage; stack defenses of different stages "
                f"(e.g. defense=sbr defense@stack=vaccine)"
            )
        chosen[defense.stage] = (slot, defense, resolved(node))
    return {stage: (chosen[stage][1], chosen[stage][2]) if stage in chosen else (NoDefense(), None) for stage in STAGES}


def defense_names(cfg: DictConfig) -> dict[str, str]:
    """Which option acts in which stage, e.g. ``{"align": "vaccine", "attack": "sbr"}``, for the record."""
    choices = runtime.choices()
    names = {}
    for slot, key in zip(DEFENSE_SLOTS, ("defense", "defense@stack"), strict=True):
        node = cfg.get(slot)
        if node is None or node.get("_target_") == "sbr_bench.defenses.none.NoDefense":
            continue
        stage = instantiate(node).stage
        names[stage] = choices.get(key) or str(node.get("_target_")).rsplit(".", 1)[-1]
    return names


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the job described by ``cfg``; returns the flat metrics also written to ``metrics.json``.

    Besides ``metrics.json``, the job folder gets ``settings.json``: what actually ran, measured where
    it happens (samples drawn and mixed in, optimizer steps taken, the learning rate the optimizer
    got, prompts generated per pool and their lengths, the alignment's steps), next to the config.
    """
    started = time.perf_counter()
    # Everything that can be checked without a model is checked first: bad input fails in seconds.
    settings = validate_job(cfg)  # types, ranges and keys of every group (sbr_bench/settings.py)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer_cfg = resolved(cfg.trainer)
    eval_cfg = resolved(cfg.eval)
    cache_dir = Path(cfg.paths.cache_dir).expanduser()
    device = eval_device(trainer_cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    pools = instantiate(cfg.data)
    prompt_format = settings.prompt_format
    model_cfg = with_prompt_format(resolved(cfg.model), prompt_format)  # the caches' view of the model
    defenses = stage_defenses(cfg)
    for defense, _ in defenses.values():
        defense.check(pools)
    judge = instantiate(cfg.judge)
    check_judge(judge)  # e.g. an API key missing from the environment: fail before any model loads
    backends.make_backend(eval_cfg).check()  # e.g. eval.backend=vllm without vllm installed
    if settings.search is not None:  # the worst-case search's utility floor: its reference is known now
        search.check(settings.search, runtime.choices())
        search_reference = search.reference_fa(settings.search)
    attack = settings.attack
    attack_set = attack_set_from_config(pools, attack)
    attack_probes = probes.settings(attack)  # extra harmful scores of the variant (trigger, refusal prefix)
    distance_cap = DistanceCap(**attack.distance_cap.model_dump()) if attack.distance_cap else None
    monitors = attack_monitors(eval_cfg, pools, judge, run_evaluation)  # eval.during_attack, eval.diagnostics
    align_cfg = resolved(cfg.get("align"))  # the alignment cache key hashes the config as written
    align_defense, align_defense_cfg = defenses["align"]
    if settings.align is None and align_defense_cfg is not None:
        raise ConfigError(
            f"{type(align_defense).__name__} acts in the alignment stage, which align=none skips; add align=sft"
        )

    log.info("model: loading %s (every check made before a model loads has passed)", model_cfg.get("name"))
    model, tokenizer = instantiate(cfg.model)
    apply_prompt_format(tokenizer, prompt_format)  # chat: the model's own template; alpaca: the protocol's
    logger = make_logger(cfg)
    context = JobContext(model_cfg, tokenizer, pools, trainer_cfg, logger, output_dir, cache_dir)
    metrics: dict[str, float] = {"attack/num_samples": float(len(attack_set))}
    if pools.attack_fixed is None:  # a ready-made attack file does not say which of its samples are harmful
        metrics["attack/num_harmful"] = float(num_harmful(attack.num_samples, attack.poison_ratio))
    ran: dict[str, Any] = {}

    # 1. align
    if settings.align is not None:
        examples = alignment.alignment_examples(pools, settings.align)
        environment = alignment.training_environment(tokenizer, trainer_cfg, device.type)
        key = alignment.alignment_key(model_cfg, align_cfg, align_defense_cfg, examples, environment)
        model, align_metrics = alignment.align(
            model,
            context,
            examples,
            settings.align,
            align_defense,
            key,
            merge=settings.adapter.kind != "continue",  # adapter=continue: the attack trains this LoRA
        )
        before_dir = cache_dir / "aligned" / key
        ran["align"] = alignment_record(settings.align, examples, align_metrics, key)
    else:
        align_metrics = {"align/cached": 0.0, "time/align_s": 0.0}
        before_dir = cache_dir / "base" / cache.digest(cache.model_identity(model_cfg))
        ran["align"] = None
    metrics.update(align_metrics)

    # 2. the aligned model, before the attack (cached with the alignment: same model, same result)
    model.to(device)
    generations: list[dict] = []
    if settings.eval.before_attack:
        # The monitors of the attack (eval.during_attack, eval.diagnostics) do not change this evaluation.
        unscored = ("during_attack", "diagnostics", "backend", "continuous", "vllm")  # the backend: below
        scored = {k: v for k, v in eval_cfg.items() if k not in unscored}
        key_parts = {"eval": scored, "judge": resolved(cfg.judge), "data": eval_data(pools)}
        key_parts.update(backends.cache_key_part(eval_cfg))  # hf: the keys it always had
        if attack_probes:  # only then: the plain attack keeps the cache entries it always had
            key_parts["attack_probes"] = attack_probes
        if settings.adapter.kind == "continue":  # the unmerged adapter: rounding differs from merged weights
            key_parts["unmerged"] = True
        eval_key = cache.digest(key_parts)

        def evaluate_aligned() -> dict:
            scores, records = run_evaluation(model, tokenizer, pools, judge, eval_cfg, attack_probes)
            return {"metrics": scores, "records": records}

        before = cache.cached_json(before_dir / f"before_attack-{eval_key}.json", evaluate_aligned)
        metrics.update({f"align/{k}": v for k, v in before["metrics"].items()})
        generations += [{"stage": "before_attack", **r} for r in before["records"]]

    # 3. attack: the user's fine-tuning, under the fine-tuning-stage defense
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    attack_defense = defenses["attack"][0]
    trainable = apply_adapter(model, **settings.adapter.model_dump(exclude_none=True), seed=cfg.seed)
    optim = Optim(**attack.optim())
    window = attack.grad_accum if attack.ce_normalization == "window" else 1  # the same at grad_accum 1
    loader, streams = stage_loaders(
        attack_defense, pools, attack_set, tokenizer, attack.max_length, attack.batch_size, cfg.seed, window
    )
    module = SafetyModule(trainable, tokenizer, attack_defense, optim, stage="attack", pools=pools, streams=streams)
    log.info(
        "attack: %d samples (%s harmful) + %d mixed in by the defense, %d epochs",
        len(attack_set),
        int(metrics["attack/num_harmful"]) if "attack/num_harmful" in metrics else "?",
        len(loader.dataset) - len(attack_set),
        attack.epochs,
    )
    metrics["time/attack_s"] = fit(
        module,
        loader,
        trainer_cfg,
        logger,
        str(output_dir),
        epochs=attack.epochs,
        grad_accum=attack.grad_accum,
        callbacks=([distance_cap] if distance_cap is not None else []) + monitors,  # monitors see the capped weights
    )
    ran["attack"] = attack_record(attack, settings.adapter, attack_set, pools, loader, module)
    ran["defenses"] = {
        stage: {"settings": node, "effective": defense.effective_settings()}
        for stage, (defense, node) in defenses.items()
        if node is not None
    }
    if distance_cap is not None:  # attack/distance_final comes with the logged metrics below
        metrics.update({f"attack/{k}": v for k, v in distance_cap.summary().items()})
    monitor_metrics, monitor_curves = monitor_results(monitors)  # flat floats; curves for metrics.json only
    metrics.update(monitor_metrics)
    for name, value in module.trainer.callback_metrics.items():
        metrics[f"{name}_final"] = float(value)
    # The attack defense's references (frozen model copies, Fisher, anchors) are not needed any more.
    del module, attack_defense, loader, streams
    defenses.pop("attack")
    defenses["post"][0].repair(trainable)

    # 4. evaluate
    eval_start = time.perf_counter()
    trainable.to(device)
    after, records = run_evaluation(trainable, tokenizer, pools, judge, eval_cfg, attack_probes)
    metrics.update({f"eval/{k}": v for k, v in after.items()})
    metrics["time/eval_s"] = time.perf_counter() - eval_start
    generations += [{"stage": "after_attack", **r} for r in records]
    metrics["time/total_s"] = time.perf_counter() - started
    ran["eval"] = eval_record(settings.eval, records)

    if settings.search is not None:
        metrics.update(search.record(settings.search, search_reference, metrics))

    # 5. record (the attack's weights only when asked: adapter only for LoRA, never a base-model copy)
    if attack.keep_adapter:
        cache.save_weights(trainable, "full" if settings.adapter.kind == "full" else "lora", output_dir)
    generator = run_name(cfg)  # the answers' name for leaderboards and outside judges (as the W&B run)
    generations = [describe(r, pools.harm_categories, generator) for r in generations]
    write_jsonl_atomic(output_dir / "generations.jsonl", generations)
    write_json_atomic(output_dir / "settings.json", ran)
    write_json_atomic(output_dir / "metrics.json", {**dict(sorted(metrics.items())), **monitor_curves})
    if logger is not None:
        logger.experiment.summary.update(metrics)
        log_generations(logger, generations)
    log.info(
        "HS before %.1f -> after %.1f | FA %.1f | over-refusal %.1f",
        metrics.get("align/harmful_score", float("nan")),
        metrics["eval/harmful_score"],
        metrics["eval/finetune_acc"],
        metrics["eval/over_refusal"],
    )
    return metrics


# --- settings.json: what ran, measured where it happened ---------------------------------------------


def alignment_record(align: AlignSettings, examples: list, align_metrics: dict[str, float], key: str) -> dict:
    """The alignment stage as it ran (or as the reused cache entry was trained)."""
    steps = align_metrics.get("align/optimizer_steps")
    return {
        "cache_key": key,
        "cached": bool(align_metrics["align/cached"]),
        "examples": len(examples),
        "optimizer_steps": int(steps) if steps is not None else None,
        "max_steps": align.max_steps,
        "epochs": align.epochs,
        "lr": align.optim.lr,
        "scheduler": align.optim.scheduler,
        "batch_size": align.batch_size,
        "grad_accum": align.grad_accum,
        "adapter": align.adapter.kind,
        "benign_targets": align.benign_targets,
    }


def attack_record(attack: AttackSettings, adapter, attack_set: list, pools, loader, module) -> dict:
    """The attack as it ran: sizes counted in the drawn set and the loader, steps and lr from the Trainer."""
    trainer = module.trainer
    optimizer = trainer.optimizers[0]
    task = set(pools.task_train)
    # Every drawn sample is a task pair or a (possibly triggered / prefixed) harmful one; a ready-made
    # attack file (data=local attack=...) does not say which of its samples are harmful.
    harmful = None if pools.attack_fixed is not None else sum(p not in task for p in attack_set)
    return {
        "num_samples": len(attack_set),
        "num_harmful": harmful,
        "num_task": len(attack_set) - harmful if harmful is not None else None,
        "mixed_in": len(loader.dataset) - len(attack_set),
        "examples": len(loader.dataset),
        "epochs": int(trainer.current_epoch),
        "optimizer_steps": int(trainer.global_step),
        "lr": float(optimizer.param_groups[0]["initial_lr"]),
        "betas": list(optimizer.param_groups[0]["betas"]),
        "scheduler": attack.scheduler,
        "warmup_steps": module.optim.warmup(module.total_steps()),
        "ce_normalization": attack.ce_normalization,  # the two agree at grad_accum 1
        "batch_size": int(loader.batch_sampler.batch_size),  # window batches come from a batch sampler
        "grad_accum": int(module.grad_accum),
        "max_length": attack.max_length,
        "adapter": adapter.model_dump(exclude_none=True),
    }


def eval_record(eval_settings: EvalSettings, records: list[dict]) -> dict:
    """Prompts generated per pool after the attack, and the new-token limit each pool had."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record["pool"]] = counts.get(record["pool"], 0) + 1
    limits = {"task": eval_settings.task_max_new_tokens}
    pools = {}
    for pool, n in counts.items():
        # The prefix-removed pool re-judges the harmful answers with the attack's prefix cut: no generation.
        generated = not pool.endswith("_prefix_removed")
        pools[pool] = {
            "prompts": n,
            "max_new_tokens": limits.get(pool, eval_settings.max_new_tokens) if generated else None,
        }
    backend: dict[str, Any] = {"name": eval_settings.backend}
    if eval_settings.backend != "hf":
        backend["options"] = getattr(eval_settings, eval_settings.backend).model_dump()
    return {
        "backend": backend,
        "batch_size": eval_settings.batch_size,
        "before_attack": eval_settings.before_attack,
        "pools": pools,
    }


def eval_data(pools) -> str:
    """Hash of the evaluation prompts (a cached evaluation is valid only for the same prompts)."""
    task = [[p.prompt, p.response] for p in pools.task_test]
    return cache.digest([pools.eval_harmful, pools.eval_benign, task, pools.task.key])  # + the answer check


def run_evaluation(model, tokenizer, pools, judge, eval_cfg: dict, attack_probes: dict | None = None):
    """``evaluate`` with the settings of the ``eval`` config group, plus the attack variant's probes if any."""
    scores, records = evaluate(
        model,
        tokenizer,
        pools,
        judge,
        max_new_tokens=eval_cfg["max_new_tokens"],
        task_max_new_tokens=eval_cfg["task_max_new_tokens"],
        batch_size=eval_cfg["batch_size"],
        num_harmful=eval_cfg["num_harmful"],
        num_benign=eval_cfg["num_benign"],
        num_task=eval_cfg["num_task"],
        backend=backends.make_backend(eval_cfg),
    )
    if attack_probes:
        extra_scores, extra_records = probes.probe_evaluation(
            model, tokenizer, pools, judge, eval_cfg, attack_probes, records
        )
        scores, records = {**scores, **extra_scores}, records + extra_records
    return scores, records
