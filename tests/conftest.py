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

from pathlib import Path

import pytest
from helpers import compose_config


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
