"""The defense contract, one generic matrix that every option of ``conf/defense/`` passes.

The options are the YAML files of ``conf/defense/``: a new defense is covered as soon as its YAML
exists, with no list to edit (docs/adding-a-defense.md). On the toy model, for each option:

- it composes, its settings validate, and it instantiates a ``Defense`` with a declared stage and a
  declared ``plain_sft_at``; ``check`` accepts the bundled pools;
- two optimizer steps of two micro-batches in its own stage, through the real ``SafetyModule`` and
  ``training.fit`` with its extra data, give finite losses, log every term it returns as
  ``<stage>/loss_<name>``, move the weights and leave the gradients the module guarantees (below);
- at its ``plain_sft_at`` settings the same steps give plain SFT's weights (``defense=none``, same
  seed), and at its own settings they do not (the knob is the one that matters);
- an alignment-stage option has an alignment cache entry of its own; any other option shares
  plain SFT's.

Gradients, as the module and Lightning guarantee them: Lightning clears every ``.grad`` after
``on_fit_start`` (the defense's ``setup``) and, under automatic optimization, before each backward;
under manual optimization the module clears them after every optimizer step (``zero_grad``: set to
None). At the end of the stage (``on_train_end``) the module drops the last step's gradients, so no
parameter holds one afterwards, whichever way the defense optimizes. No frozen parameter holds one at
any optimizer step.

Each defense's own math is tested in ``tests/test_defense_<name>.py``; the whole job per option in
``tests/test_defenses_e2e.py``.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers import alignment_entry, compose_config
from hydra.utils import instantiate

from sbr_bench.defenses import defense_options
from sbr_bench.defenses.base import STAGES, Defense
from sbr_bench.models.adapters import apply_adapter
from sbr_bench.settings import validate_job
from sbr_bench.training.fit import fit, stage_loaders
from sbr_bench.training.module import Optim, SafetyModule

OPTIONS = defense_options()
TOY = ["model=toy", "debug=fast", "logger=none"]
STEPS, GRAD_ACCUM, BATCH_SIZE = 2, 2, 2  # 8 pairs: two optimizer steps of two micro-batches, one epoch
TRAINER = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}


def option_config(name: str, settings: dict | None = None):
    """The job config of ``model=toy debug=fast defense=<name>``, plus ``defense.<key>=<value>`` per setting
    (composed once: treat it as read-only)."""
    return composed(name, json.dumps(settings or {}, sort_keys=True))


@functools.cache
def composed(name: str, settings: str):
    overrides = [f"defense.{key}={json.dumps(value)}" for key, value in json.loads(settings).items()]
    return compose_config([*TOY, f"defense={name}", *overrides], Path("/nonexistent/job"), Path("/nonexistent/cache"))


@functools.cache
def plain_alignment_entry() -> str:
    """The alignment key of ``defense=none``: plain SFT's alignment."""
    return alignment_entry(option_config("none"))


def stage_pairs(pools, stage: str) -> list:
    """Eight training pairs of the stage: refusals and helpful answers (align), task and harmful pairs (attack)."""
    if stage == "align":
        return [*pools.align_harmful[:4], *pools.align_benign[:4]]
    return [*pools.task_train[:4], *pools.attack_harmful[:4]]


class GradientWitness(pl.Callback):
    """The names of the parameters that hold a gradient when an optimizer step is taken."""

    def __init__(self):
        self.seen: set[str] = set()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.seen |= {n for n, p in pl_module.model.named_parameters() if p.grad is not None}


def train(defense: Defense, stage: str, toy, pools, tmp_path) -> dict:
    """Two optimizer steps of ``defense`` in ``stage`` on a fresh LoRA of the toy model (seed 0)."""
    base, tokenizer = toy
    model = apply_adapter(copy.deepcopy(base), kind="lora", r=4, alpha=8, seed=0)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    returned: set[str] = set()  # the names of the terms / losses the defense handed to the module

    def spy(hook):
        def wrapped(module, batch):
            out = hook(module, batch)
            returned.update(out)
            return out

        return wrapped

    defense.loss_terms = spy(defense.loss_terms)
    if defense.manual_optimization:
        defense.training_step = spy(defense.training_step)
    pl.seed_everything(0, verbose=False)
    loader, streams = stage_loaders(defense, pools, stage_pairs(pools, stage), tokenizer, 128, BATCH_SIZE, seed=0)
    module = SafetyModule(model, tokenizer, defense, Optim(lr=1e-2), stage, pools=pools, streams=streams)
    witness = GradientWitness()
    fit(module, loader, TRAINER, None, str(tmp_path), max_steps=STEPS, grad_accum=GRAD_ACCUM, callbacks=[witness])
    return {
        "steps": module.trainer.global_step,
        "metrics": {k: float(v) for k, v in module.trainer.callback_metrics.items()},
        "returned": returned,
        "grads": {n for n, p in model.named_parameters() if p.grad is not None},
        "stepped_grads": witness.seen,
        "frozen": {n for n, p in model.named_parameters() if not p.requires_grad},
        "start": start,
        "weights": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
    }


@pytest.fixture(scope="module")
def runs(toy, pools, tmp_path_factory):
    """``runs(name, settings, stage)``: ``train`` of that option at those settings in ``stage`` (default:
    its own), computed once per module. ``runs("none", stage=s)`` is plain SFT in stage ``s``."""
    done: dict = {}

    def run(name: str, settings: dict | None = None, stage: str | None = None) -> dict:
        key = (name, json.dumps(settings, sort_keys=True), stage)
        if key not in done:
            defense = instantiate(option_config(name, settings).defense)
            done[key] = train(defense, stage or defense.stage, toy, pools, tmp_path_factory.mktemp(name))
        return done[key]

    return run


def declared_defense(name: str) -> Defense:
    return instantiate(option_config(name).defense)


@pytest.mark.parametrize("name", OPTIONS)
def test_the_option_composes_validates_and_declares_its_stage(name, pools):
    cfg = option_config(name)
    validate_job(cfg)  # types, ranges and keys, as a job checks them before anything loads
    defense = instantiate(cfg.defense)
    assert isinstance(defense, Defense)
    assert defense.stage in STAGES
    cls = type(defense)
    assert hasattr(cls, "plain_sft_at"), f"{cls.__name__}: declare plain_sft_at = {{...}} (or None, saying why)"
    assert cls.plain_sft_at is None or isinstance(cls.plain_sft_at, dict)
    defense.check(pools)  # the bundled pools suit its default settings


@pytest.mark.parametrize("name", OPTIONS)
def test_two_steps_in_its_stage_train_log_every_term_and_leave_no_stray_gradient(name, runs):
    defense = declared_defense(name)
    if defense.stage == "post":
        pytest.skip("a post-stage defense trains nothing: its repair is covered by the plain_sft_at test")
    run = runs(name)
    stage = defense.stage
    assert run["steps"] == STEPS
    losses = {k: v for k, v in run["metrics"].items() if k.startswith(f"{stage}/loss")}
    assert f"{stage}/loss_task" in losses
    assert all(math.isfinite(v) for v in losses.values()), losses
    missing = {k for k in run["returned"] if f"{stage}/loss_{k}" not in losses}
    assert not missing, f"terms returned but not logged as {stage}/loss_<name>: {sorted(missing)}"
    assert any(not torch.equal(run["start"][n], w) for n, w in run["weights"].items()), "no weight moved"
    assert run["stepped_grads"], "no parameter held a gradient at an optimizer step"
    assert not run["stepped_grads"] & run["frozen"], "a frozen parameter got a gradient"
    assert run["grads"] == set(), "gradients left on the parameters after the stage"


@pytest.mark.parametrize("name", OPTIONS)
def test_its_plain_sft_settings_train_exactly_as_plain_sft(name, runs, toy):
    defense = declared_defense(name)
    settings = type(defense).plain_sft_at
    if settings is None:
        pytest.skip(f"{type(defense).__name__}.plain_sft_at is None: no setting of it is plain SFT (see the class)")
    if defense.stage == "post":
        model = apply_adapter(copy.deepcopy(toy[0]), kind="lora", r=4, alpha=8, seed=0)
        before = [p.detach().clone() for p in model.parameters()]
        instantiate(option_config(name, settings).defense).repair(model)
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        return
    plain = runs("none", stage=defense.stage)["weights"]  # plain SFT in its stage
    got = runs(name, settings)["weights"]
    differ = [n for n in plain if not torch.allclose(got[n], plain[n], rtol=1e-5, atol=1e-7)]
    assert not differ, f"{name} at {settings} differs from plain SFT in {differ[:3]}"
    if settings:  # the control: at the option's own settings the same steps are not plain SFT
        own = runs(name)["weights"]
        assert any(not torch.allclose(own[n], plain[n], rtol=1e-5, atol=1e-7) for n in plain)


@pytest.mark.parametrize("name", OPTIONS)
def test_only_an_alignment_stage_defense_has_an_alignment_of_its_own(name):
    key, plain = alignment_entry(option_config(name)), plain_alignment_entry()
    if declared_defense(name).stage == "align":
        assert key != plain  # its own alignment, cached separately from plain SFT's
    else:
        assert key == plain  # the other stages share the plain alignment
