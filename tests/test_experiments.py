"""The experiment presets (conf/experiment/) and the seeds axis (conf/seeds/): every job of every grid composes."""

from __future__ import annotations

import pytest
from helpers import assert_runs_its_config
from omegaconf import OmegaConf

from sbr_bench import CONF_DIR
from sbr_bench.cli.precheck import config_loader, parse
from sbr_bench.defenses import defense_options

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
PAPER_SCALE = ["sbr_table1", "poison_ratio", "lambda_sweep", "num_anchors", "persistent_hft"]
# Presets written from another paper's official scripts (docs/protocols.md), GPU only.
PROTOCOLS = ["lisa_sst2"]
# The worst case of a defense over what the attacker controls: searched (optuna extra) or as a grid, per tier.
SEARCHES = ["attacker_search", "attacker_search_cpu", "attacker_search_toy"]
WORST_CASE = [*SEARCHES, "attacker_grid", "attacker_grid_cpu", "attacker_grid_toy"]


def grid(cfg) -> list[list[str]]:
    """The overrides of every job of the experiment's own sweep, expanded as Hydra's basic sweeper does
    it (a ``glob(*)`` over a config group included), through the pre-check's parser."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    (jobs,) = BasicSweeper.split_arguments(parse(params, config_loader(None)), None)
    return [list(job) for job in jobs]


def test_every_preset_the_issue_asks_for_exists_with_its_cpu_variant():
    assert set(EXPERIMENTS) == {
        "quickstart",
        *PAPER_SCALE,
        *(f"{name}_cpu" for name in PAPER_SCALE),
        *PROTOCOLS,
        *WORST_CASE,
    }


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_each_preset_opens_with_its_command_and_the_paper_result_it_reproduces(name):
    text = (CONF_DIR / "experiment" / f"{name}.yaml").read_text()
    header = text.split("\ndefaults:")[0]
    assert text.startswith("# @package _global_\n")
    assert f"sbr-bench -m experiment={name}" in header
    words = ("Table", "Figure", "ablation")
    words = ("script",) if name in PROTOCOLS else ("worst case",) if name in WORST_CASE else words
    assert any(word in header for word in words), "name the paper table or figure (or the official script)"
    if name in WORST_CASE:
        assert "search.reference_fa=<FA>" in header  # the second command of a worst-case comparison


GRIDS = [name for name in EXPERIMENTS if name not in SEARCHES]  # a search's jobs: tests/test_attacker_search.py


@pytest.mark.parametrize("name", GRIDS)
def test_every_job_of_each_presets_grid_composes_and_runs_the_values_it_prints(make_cfg, monkeypatch, name):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the paper presets name hub models
    cfg = make_cfg([f"experiment={name}"])
    assert cfg.experiment_name == name  # its own W&B group and multirun folder
    jobs = grid(cfg)
    assert len(jobs) >= 2
    for job in jobs:
        composed = make_cfg([f"experiment={name}", *job])
        for override in job:
            key, value = override.split("=")
            if key in composed.hydra.runtime.choices:
                assert composed.hydra.runtime.choices[key] == value
            else:
                assert str(OmegaConf.select(composed, key)) == value
        assert_runs_its_config(composed)


def test_paper_presets_run_the_paper_model_and_cpu_variants_a_cpu_model(make_cfg):
    for name in PAPER_SCALE:
        assert make_cfg([f"experiment={name}"]).model.name == "llama3_8b_instruct"
        assert make_cfg([f"experiment={name}_cpu"]).model.name == "smollm2_135m"
    # the command line still picks another model, e.g. the toy one for a minute-scale look
    assert make_cfg(["experiment=poison_ratio_cpu", "model=toy"]).model.name == "toy"


def test_grids_are_the_papers_grids(make_cfg):
    def params(name):
        return dict(make_cfg([f"experiment={name}"]).hydra.sweeper.params)

    for scale in ("", "_cpu"):
        assert params(f"poison_ratio{scale}")["attack.poison_ratio"] == "0.05,0.1,0.2,0.3"
        assert params(f"lambda_sweep{scale}")["defense.lam"] == "0,5,10,50,100"
        assert params(f"num_anchors{scale}")["defense.num_anchors"] == "1,2,4,8"
    assert set(params("sbr_table1")["data"].split(",")) == {
        "beavertails_sst2",
        "beavertails_agnews",
        "beavertails_gsm8k",
        "beavertails_alpaca_eval",
    }
    persistent = make_cfg(["experiment=persistent_hft"])
    assert persistent.attack.name == "persistent" and persistent.eval.during_attack.every == 5
    assert persistent.attack.epochs == 50  # the paper's 50 epochs
    assert make_cfg(["experiment=persistent_hft_cpu"]).eval.during_attack.every == 1


def test_the_table1_presets_sweep_every_defense_option(make_cfg):
    options = {p.stem for p in (CONF_DIR / "defense").glob("*.yaml")}
    for name in ("sbr_table1", "sbr_table1_cpu"):
        jobs = grid(make_cfg([f"experiment={name}"]))
        swept = {o.removeprefix("defense=") for job in jobs for o in job if o.startswith("defense=")}
        assert swept == options, f"{name}: every defense option belongs in the table"


@pytest.mark.parametrize(("option", "seeds"), [("two", "0,1"), ("three", "0,1,2"), ("five", "0,1,2,3,4")])
def test_the_seeds_axis_adds_to_any_presets_grid(make_cfg, option, seeds):
    for name in ("poison_ratio_cpu", "lambda_sweep_cpu", "sbr_table1"):  # (quickstart has its own seeds)
        alone = make_cfg([f"experiment={name}"]).hydra.sweeper.params
        cfg = make_cfg([f"experiment={name}", f"seeds={option}"])
        assert dict(cfg.hydra.sweeper.params) == {**alone, "seed": seeds}
        assert len(grid(cfg)) == len(seeds.split(",")) * len(grid(make_cfg([f"experiment={name}"])))
    # and to a plain command-line sweep without an experiment
    assert make_cfg([f"seeds={option}"]).hydra.sweeper.params == {"seed": seeds}


@pytest.mark.parametrize(
    ("args", "count", "first"),
    [
        (["experiment=lambda_sweep_cpu", "model=toy"], 5, "sbr-hft-toy-defense.lam=0-s0"),
        (["experiment=lambda_sweep_cpu", "model=toy", "seeds=two"], 10, "sbr-hft-toy-defense.lam=0-s0"),
        # every defense option (defense: glob(*), in sorted order) on each of the 4 tasks
        (
            ["experiment=sbr_table1"],
            4 * len(defense_options()),
            f"{defense_options()[0]}-hft-llama3_8b_instruct-data=beavertails_sst2-s0",
        ),
    ],
    ids=["lambda_sweep_cpu", "lambda_sweep_cpu x two seeds", "sbr_table1"],
)
def test_the_runs_of_a_preset_get_distinct_wandb_names(args, count, first, tmp_path, monkeypatch):
    """Each job's name comes from its group choices and the overrides that vary across the sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    from sbr_bench import runtime
    from sbr_bench.cli import precheck
    from sbr_bench.wandb_run import run_name

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the paper preset names hub models
    args = [*args, f"hydra.sweep.dir={tmp_path}"]
    loader = precheck.config_loader(None)
    runtime.record_sweep(precheck.compose(loader, "config", args, RunMode.MULTIRUN))  # as its callback does
    names = []
    for _, cfg in precheck.job_configs(loader, "config", args, multirun=True):
        with open_dict(cfg):
            cfg.hydra.mode = RunMode.MULTIRUN
        HydraConfig.instance().set_config(cfg)
        names.append(run_name(cfg))
    HydraConfig.instance().cfg = None  # a multirun Hydra config left behind would change later tests' jobs
    assert len(names) == len(set(names)) == count
    assert names[0] == first
