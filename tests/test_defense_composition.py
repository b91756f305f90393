"""Defenses compose: one per stage, stacked from the command line, and added from outside the package."""

from __future__ import annotations

import json
import textwrap

import pytest
from helpers import compose_config, sbr_bench

from sbr_bench.errors import ConfigError
from sbr_bench.job import run_job
from sbr_bench.pipeline import defense_names, stage_defenses

# The "Adding a defense" example of docs/adding-a-defense.md, written as a user would: a folder outside the package
# holding a YAML option and an importable module.
EXTERNAL_YAML = """\
# Adapter weight decay: lam * sum of squared trainable weights (a toy example of an external defense).
_target_: my_defenses.adapter_decay.AdapterDecay
lam: 0.5   # illustrative value
"""

EXTERNAL_MODULE = '''\
"""``defense=adapter_decay``: pull the fine-tuned adapter weights towards zero."""

from sbr_bench.defenses.base import Defense
from sbr_bench.schema import NonNegativeFloat


class AdapterDecay(Defense):
    stage = "attack"

    def __init__(self, lam: NonNegativeFloat = 0.5):  # the annotation is the check: lam >= 0, a finite number
        super().__init__()
        self.lam = lam

    def loss_terms(self, module, batch):
        return {"decay": self.lam * sum(p.pow(2).sum() for p in module.trainable_parameters())}
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The example outside the package: its configs as a folder (conf/) and inside its package (pkg://)."""
    root = tmp_path_factory.mktemp("plugin")
    for conf in (root / "conf", root / "my_defenses" / "conf"):
        (conf / "defense").mkdir(parents=True)
        (conf / "defense" / "adapter_decay.yaml").write_text(EXTERNAL_YAML)
    (root / "my_defenses" / "__init__.py").write_text("")
    (root / "my_defenses" / "conf" / "__init__.py").write_text("")
    (root / "my_defenses" / "adapter_decay.py").write_text(textwrap.dedent(EXTERNAL_MODULE))
    return root


# The three ways Hydra takes a config folder from outside the package.
SEARCH_PATHS = {
    "hydra.searchpath file://": lambda root: [f"hydra.searchpath=[file://{root / 'conf'}]"],
    "--config-dir": lambda root: ["--config-dir", str(root / "conf")],
    "hydra.searchpath pkg://": lambda root: ["hydra.searchpath=[pkg://my_defenses.conf]"],
}


def test_two_defenses_of_one_stage_are_refused_with_one_line(make_cfg):
    cfg = make_cfg(["model=toy", "defense=sbr", "defense@stack=sbr"])
    with pytest.raises(ConfigError, match="both act in the attack stage; stack defenses of different stages"):
        stage_defenses(cfg)


def test_no_stack_leaves_the_other_stages_undefended(make_cfg):
    cfg = make_cfg(["model=toy", "defense=sbr"])
    defenses = stage_defenses(cfg)
    assert type(defenses["attack"][0]).__name__ == "SBR" and defenses["attack"][1]["lam"] == 50
    assert defenses["align"][1] is None and defenses["post"][1] is None
    assert defense_names(cfg) == {"attack": "sbr"}  # the option name, as chosen


@pytest.mark.parametrize("where", SEARCH_PATHS)
def test_external_defense_from_a_search_path_runs_on_the_toy_model(where, plugin, tmp_path, shared_cache):
    out = tmp_path / "job"
    args = [*SEARCH_PATHS[where](plugin), "model=toy", "debug=fast", "logger=none", "defense=adapter_decay"]
    result = sbr_bench(
        [*args, f"hydra.run.dir={out}"], cwd=tmp_path, cache=shared_cache, env={"PYTHONPATH": str(plugin)}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["attack/loss_decay_final"] > 0  # the external term was added and logged
    assert json.loads((out / "status.json").read_text())["defenses"] == {"attack": "adapter_decay"}


@pytest.mark.parametrize("where", SEARCH_PATHS)
def test_an_external_option_is_known_to_the_one_line_checks(where, plugin, monkeypatch):
    """The option check asks Hydra's own repository (so it sees every search path), and the external
    defense's settings are checked from its annotations, before anything runs (sbr-bench's pre-check)."""
    from sbr_bench.cli.precheck import problem
    from sbr_bench.defenses import defense_options

    monkeypatch.syspath_prepend(str(plugin))
    where_args = SEARCH_PATHS[where](plugin)
    valid = ", ".join(sorted([*defense_options(), "adapter_decay"]))  # the package's options and the external one
    assert problem([*where_args, "model=toy", "defense=adapter_decy"]) == (
        f"defense=adapter_decy: no such option; valid options: {valid}"
    )
    assert problem([*where_args, "model=toy", "defense=adapter_decay", "defense.lam=-1"]) == (
        "defense.lam=-1 must be >= 0"
    )
    assert problem([*where_args, "model=toy", "defense=adapter_decay"]) is None


def test_vaccine_alignment_and_sbr_attack_stack_in_one_job(tmp_path):
    cache = tmp_path / "cache"  # private: the only alignment entry in it is Vaccine's
    common = ["model=toy", "debug=fast", "logger=none", "align.max_steps=60"]
    run_job(compose_config([*common, "defense=vaccine"], tmp_path / "vaccine", cache, keep_hydra=False))
    run_job(compose_config([*common, "defense=sbr", "defense@stack=vaccine"], tmp_path / "both", cache))
    status = json.loads((tmp_path / "both" / "status.json").read_text())
    metrics = json.loads((tmp_path / "both" / "metrics.json").read_text())
    assert status["status"] == "ok" and status["defenses"] == {"align": "vaccine", "attack": "sbr"}
    assert len([p for p in (cache / "aligned").iterdir() if not p.name.startswith(".")]) == 1
    assert metrics["align/cached"] == 1.0  # the stacked job reused the Vaccine alignment
    assert metrics["attack/loss_sbr_final"] > 0  # and SBR acted during the attack
