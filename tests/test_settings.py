"""Every value the pipeline uses is the composed config's own: no factor, no hidden default, no conversion.

For every option of every config group and every job of every experiment preset (checked where those
are composed, tests/test_configs.py and tests/test_experiments.py, by ``helpers.assert_runs_its_config``):
the typed settings the pipeline runs with equal the composed config, the attack set it draws holds
``attack.num_samples`` samples of which ``round(p * n)`` are harmful, a defense's mixed-in data has the
size its config says, and the alignment's budget is the config's. What Lightning then actually ran
is checked against the config in tests/test_pipeline.py (``settings.json``). Here: the cases the
multipliers used to get wrong, and the structure that keeps them out.
"""

from __future__ import annotations

import re

from hydra.utils import instantiate
from omegaconf import OmegaConf

from sbr_bench import CONF_DIR
from sbr_bench.settings import validate_job

# Every option of every group (tests/test_configs.py) and every job of every preset
# (tests/test_experiments.py) is checked by helpers.assert_runs_its_config where it is composed.


def test_tier_relative_attacks_have_their_values_written_out(make_cfg):
    """The values that were factors before (2.5 x epochs, 0.5 x n) are the composed config itself."""
    expected = {
        ("persistent", "llama3_8b_instruct"): ("epochs", 50),
        ("persistent", "smollm2_135m"): ("epochs", 5),
        ("persistent", "toy"): ("epochs", 8),
        ("pure_harmful", "llama3_8b_instruct"): ("num_samples", 500),
        ("pure_harmful", "smollm2_135m"): ("num_samples", 100),
        ("pure_harmful", "toy"): ("num_samples", 100),
    }
    for (attack, model), (key, value) in expected.items():
        cfg = make_cfg([f"attack={attack}", f"model={model}"], keep_hydra=False)
        assert cfg.attack[key] == value, (attack, model)
    # The command line means what it says (it used to train 50 epochs here).
    assert make_cfg(["attack=persistent", "model=toy", "attack.epochs=20"]).attack.epochs == 20


def test_safety_mix_sizes_its_mix_from_the_n_the_attack_trains_on(make_cfg, pools):
    cfg = make_cfg(["attack=pure_harmful", "defense=safety_mix", "defense.num_samples=null", "defense.ratio=0.5"])
    settings = validate_job(cfg)
    assert settings.attack.num_samples == cfg.defense.attack_size == 100
    assert len(instantiate(cfg.defense).extra_data(pools)["mix"]) == 50


def test_the_model_picks_its_tier_and_the_command_line_picks_another(make_cfg):
    def tier(overrides):
        return make_cfg(overrides).hydra.runtime.choices.tier

    assert tier(["model=toy"]) == "toy"
    assert tier([]) == "cpu"
    assert tier(["model=llama3_8b_instruct"]) == "paper"
    assert tier(["experiment=sbr_table1"]) == "paper"
    assert tier(["experiment=sbr_table1", "model=toy"]) == "toy"
    paper_smollm2 = make_cfg(["model=smollm2_135m", "tier=paper"])
    assert paper_smollm2.attack.num_samples == 1000 and paper_smollm2.trainer.accelerator == "gpu"


SCALE = re.compile(r"^\s*\w+_scale\s*:", re.MULTILINE)


def test_no_scale_factors_remain():
    for path in CONF_DIR.rglob("*.yaml"):
        assert not SCALE.search(path.read_text()), path
    package = CONF_DIR.parent / "sbr_bench"
    for path in package.rglob("*.py"):
        text = path.read_text()
        for name in ("num_samples_scale", "epochs_scale", "attack_epochs(", "attack_num_samples("):
            assert name not in text, f"{path}: {name}"


def test_model_files_write_only_their_own_node(make_cfg):
    """A model option is a plain `model` node: it picks its tier and alignment, and writes nothing else."""
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        text = path.read_text()
        assert "@package" not in text, path
        loaded = OmegaConf.load(path)
        assert "attack" not in loaded and "eval" not in loaded and "_target_" in loaded, path
