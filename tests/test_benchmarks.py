"""The counts the benchmark scripts divide by, checked against an independent count; what they train."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from defense_cost import stage_adapter
from throughput import step_flops

from sbr_bench.defenses import defense_options
from sbr_bench.models.adapters import apply_adapter


def test_the_lora_step_flops_counted_from_the_shapes_equal_torchs_counter(make_cfg):
    """torch.utils.flop_counter counts every matrix product of a forward and backward pass; it does not
    count the CPU attention kernel, so it must equal the shape count without the attention term."""
    from hydra.utils import instantiate
    from torch.utils.flop_counter import FlopCounterMode

    cfg = make_cfg(["model=toy", "logger=none"])
    model, _ = instantiate(cfg.model)
    trainable = apply_adapter(model, **OmegaConf.to_container(cfg.adapter, resolve=True), seed=0)
    trainable.train()
    batch, seq = 2, 24
    ids = torch.randint(5, 100, (batch, seq), generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with counter:
        trainable(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()
    counted = step_flops(model.config, batch, seq, int(cfg.adapter.r))
    assert counted["total"] - counted["attention"] == counter.get_total_flops()


@pytest.mark.parametrize("model", ["toy", "smollm2_135m"])
def test_defense_cost_gives_every_defense_an_adapter_a_fresh_model_can_take(make_cfg, model):
    """defense_cost.py starts each defense from the bare model: a ``continue`` adapter (Booster's
    protocol on a LoRA tier) would need an alignment LoRA that is not there."""
    from hydra.utils import instantiate

    for name in defense_options():
        cfg = make_cfg([f"model={model}", f"defense={name}", "logger=none"])
        defense = instantiate(cfg.defense)
        assert stage_adapter(cfg, defense)["kind"] in ("lora", "full"), name
    booster = make_cfg([f"model={model}", "defense=booster", "logger=none"])
    assert stage_adapter(booster, instantiate(booster.defense)) == OmegaConf.to_container(booster.align.adapter)
