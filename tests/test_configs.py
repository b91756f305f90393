"""Every option of every config group composes; every _target_ imports; group interplay is right."""

from __future__ import annotations

import re

import pytest
from helpers import assert_runs_its_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sbr_bench import CONF_DIR

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "local"))
# Specialising groups: their options are picked by other choices (the `${attack}_${tier}` entries of
# config.yaml), not by name. Each maps an option's file name to the choices that pick it.
SPECIALISING = {
    "attack_tier": lambda name: dict(zip(("attack", "tier"), name.rsplit("_", 1), strict=True)),
    "align_tier": lambda name: dict(zip(("align", "tier"), name.rsplit("_", 1), strict=True)),
    "protocol": lambda name: {"defense": name},
    "protocol_tier": lambda name: dict(zip(("defense", "tier"), name.rsplit("_", 1), strict=True)),
    "defense_tier": lambda name: dict(zip(("defense", "tier"), name.rsplit("_", 1), strict=True)),
    "data_eval": lambda name: {"data": name},
}
# Sweep spaces: an option holds a sweeper's params, placed at hydra.sweeper.params by the preset of its
# tier (a search space needs the optuna extra's sweeper to compose).
SWEEP_SPACES = {
    "attacker_space": {"toy": "attacker_search_toy", "cpu": "attacker_search_cpu", "paper": "attacker_search"},
    "attacker_grid": {"toy": "attacker_grid_toy", "cpu": "attacker_grid_cpu", "paper": "attacker_grid"},
}
NOT_BY_NAME = {*SPECIALISING, *SWEEP_SPACES}
OPTIONS = [(g, p.stem) for g in GROUPS if g not in NOT_BY_NAME for p in sorted((CONF_DIR / g).glob("*.yaml"))]
# Options that need another choice to run on the toy model (whose alignment is a full fine-tuning).
NEEDS = {
    ("adapter", "continue"): ["align=sft"],
    ("judge", "imported"): [f"judge.path={__file__}"],  # a file that exists (its verdicts are read at check())
}


def test_every_group_has_options():
    assert {
        "model",
        "adapter",
        "data",
        "align",
        "attack",
        "defense",
        "eval",
        "judge",
        "trainer",
        "logger",
        "paths",
        "tier",
        "attack_tier",
    } <= set(GROUPS)
    assert {g for g, _ in OPTIONS} == set(GROUPS) - NOT_BY_NAME


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_runs_the_values_it_prints(make_cfg, monkeypatch, group, option):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # hub model ids are checked against the cache when offline
    overrides = [f"{group}={option}"] if group in ("model", "tier") else ["model=toy", f"{group}={option}"]
    overrides += NEEDS.get((group, option), [])
    cfg = make_cfg(overrides)
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.to_container(job, resolve=True)  # every interpolation of the job config resolves
    assert cfg.hydra.runtime.choices[group] == option
    # The parts that build offline are built: data pools, defense, judge. (Hub data options need
    # their datasets: tests/test_data_sources.py builds them from fixtures in the hub layout.)
    offline = not cfg.hydra.runtime.choices.data.startswith("beavertails_")  # also an experiment's data
    pools = instantiate(cfg.data) if offline else instantiate(make_cfg(["model=toy"]).data)
    instantiate(cfg.defense).check(pools)
    instantiate(cfg.judge)
    assert_runs_its_config(cfg)


SPECIALISED = [(g, p.stem) for g in SPECIALISING for p in sorted((CONF_DIR / g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), SPECIALISED, ids=[f"{g}/{o}" for g, o in SPECIALISED])
def test_every_specialising_option_is_picked_by_the_choices_it_names(make_cfg, monkeypatch, group, option):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # hub model ids are checked against the cache when offline
    choices = SPECIALISING[group](option)
    # A paper-tier alignment recipe needs an alignment stage: the instruct models skip it (align=none).
    align = [] if "align" in choices or "defense" not in choices else ["align=sft"]
    cfg = make_cfg([f"{k}={v}" for k, v in choices.items()] + align)
    assert cfg.hydra.runtime.choices[group] == option
    assert_runs_its_config(cfg)


SPACES = [(g, p.stem) for g in SWEEP_SPACES for p in sorted((CONF_DIR / g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), SPACES, ids=[f"{g}/{o}" for g, o in SPACES])
def test_every_sweep_space_is_the_params_of_its_tiers_preset(make_cfg, monkeypatch, group, option):
    if group == "attacker_space":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[optuna]'")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the paper presets name hub models
    cfg = make_cfg([f"experiment={SWEEP_SPACES[group][option]}", "defense=none"])
    assert cfg.hydra.runtime.choices[f"{group}@hydra.sweeper.params"] == option
    space = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    assert OmegaConf.to_container(cfg.hydra.sweeper.params) == OmegaConf.to_container(space)
    assert cfg.hydra.runtime.choices.tier == option  # the space of the tier the preset runs at
    assert_runs_its_config(cfg)


def test_every_target_imports():
    from hydra._internal.utils import _locate

    targets = set()
    for path in CONF_DIR.rglob("*.yaml"):
        text = path.read_text()
        assert "lightning.pytorch" not in text, f"{path}: use the pytorch_lightning namespace"
        targets |= set(re.findall(r"_target_:\s*([\w.]+)", text))
    assert targets
    for target in targets:
        assert _locate(target) is not None, target


def test_instruct_models_skip_alignment_unless_asked(make_cfg):
    assert make_cfg(["model=llama3_8b_instruct"]).align is None
    assert make_cfg(["model=llama3_8b_instruct", "align=sft"]).align.adapter.kind == "lora"
    assert make_cfg(["model=smollm2_135m", "align=none"]).align is None
    assert make_cfg(["model=toy"]).align.adapter.kind == "full"


def test_the_tier_sets_the_attack_scale_but_the_command_line_wins(make_cfg):
    assert make_cfg(["model=toy"]).attack.num_samples == 200
    assert make_cfg(["model=llama3_8b_instruct"]).attack.num_samples == 1000  # the paper setting
    assert make_cfg(["model=toy", "attack.num_samples=50"]).attack.num_samples == 50


def test_quickstart_sweeps_none_and_sbr_over_two_seeds_on_smollm2(make_cfg):
    cfg = make_cfg(["experiment=quickstart"])
    assert cfg.hydra.sweeper.params.defense == "none,sbr" and cfg.hydra.sweeper.params.seed == "0,1"
    assert cfg.model.name == "smollm2_135m" and cfg.attack.poison_ratio == 0.1
    assert cfg.hydra.callbacks.report._target_ == "sbr_bench.reporting.callback.ReportCallback"


DEFENSE_SETTINGS = sorted(p.stem for p in (CONF_DIR / "defense_tier").glob("*.yaml"))


@pytest.mark.parametrize("option", DEFENSE_SETTINGS)
def test_a_defense_tier_setting_replaces_the_paper_value_and_names_both_sources(make_cfg, option):
    defense, tier = option.rsplit("_", 1)
    path = CONF_DIR / "defense_tier" / f"{option}.yaml"
    text = path.read_text()
    assert re.search(r"^#\s+paper:", text, re.M) and re.search(rf"^#\s+{tier}:", text, re.M), "both sources"
    setting = OmegaConf.to_container(OmegaConf.load(path).defense)
    paper = OmegaConf.load(CONF_DIR / "defense" / f"{defense}.yaml")
    model = "toy" if tier == "toy" else "smollm2_135m"
    tiered = make_cfg([f"defense={defense}", f"model={model}", f"tier={tier}"])
    untiered = make_cfg([f"defense={defense}", f"model={model}", f"tier={tier}", "~defense_tier"])
    for key, value in setting.items():
        assert tiered.defense[key] == value
        assert untiered.defense[key] == paper[key] != value  # ~defense_tier: the paper's value, as printed
