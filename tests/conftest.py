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
from helpers import compose_config, fresh_lora, perturb, save_tiny_beaverdam


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


@pytest.fixture(scope="session")
def beaverdam_dir(tmp_path_factory) -> Path:
    """A tiny BeaverDam-shaped classifier saved like a hub copy (tests/helpers.py)."""
    return save_tiny_beaverdam(tmp_path_factory.mktemp("beaverdam"))


@pytest.fixture
def fresh_lora_toy(toy):
    """A copy of the toy model under a fresh LoRA adapter: B = 0, so it computes what the toy model does."""
    model, tokenizer = toy
    return fresh_lora(model), tokenizer


@pytest.fixture
def lora_toy(toy):
    """A copy of the toy model with a LoRA adapter whose B is non-zero (as after some alignment steps)."""
    model, tokenizer = toy
    return perturb(fresh_lora(model)), tokenizer


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped, saying why, where torch sees no CUDA device."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu: needs a CUDA device, and torch.cuda.is_available() is false here")
    for item in gpu_tests:
        item.add_marker(skip)
