"""The counts the benchmark scripts divide by: checked against an independent count."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from throughput import step_flops

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
