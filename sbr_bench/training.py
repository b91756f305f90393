"""Running one training stage with Lightning: data loader, Trainer, fit."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from sbr_bench.data.bundled import Pair
from sbr_bench.data.formatting import PadCollator, encode_pair
from sbr_bench.errors import ConfigError
from sbr_bench.module import SafetyModule


def make_loader(tokenizer, pairs: Sequence[Pair], max_length: int, batch_size: int, seed: int) -> DataLoader:
    """Shuffled loader of response-masked examples; the shuffle order depends only on ``seed``."""
    examples = [encode_pair(tokenizer, p.prompt, p.response, max_length) for p in pairs]
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        examples,
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=PadCollator(tokenizer.pad_token_id),
        num_workers=0,
    )


def stage_loaders(
    defense, pools, pairs: Sequence[Pair], tokenizer, max_length: int, batch_size: int, seed: int
) -> tuple[DataLoader, dict[str, DataLoader]]:
    """The stage's loader (its pairs plus the defense's ``"mix"`` data) and one loader per extra stream.

    Each stream is shuffled with its own seed derived from the stage's, so adding a stream never
    changes the order of the stage's own batches.
    """
    extra = dict(defense.extra_data(pools))
    loader = make_loader(tokenizer, [*pairs, *extra.pop("mix", [])], max_length, batch_size, seed)
    streams = {
        name: make_loader(tokenizer, extra[name], max_length, batch_size, seed + 1 + i)
        for i, name in enumerate(sorted(extra))
    }
    return loader, streams


def fit(
    module: SafetyModule,
    loader: DataLoader,
    trainer_cfg: dict[str, Any],
    logger,
    output_dir: str,
    epochs: int | None = None,
    max_steps: int | None = None,
    grad_accum: int = 1,
    callbacks: list | None = None,
) -> float:
    """Train ``module`` for ``max_steps`` optimizer steps if given, else ``epochs`` epochs; returns seconds."""
    if max_steps is None and epochs is None:
        raise ConfigError("a training stage needs epochs or max_steps")
    module.grad_accum = grad_accum
    trainer = pl.Trainer(
        **trainer_cfg,
        max_epochs=-1 if max_steps else epochs,
        max_steps=max_steps or -1,
        # Under manual optimization the module accumulates itself (Lightning refuses to).
        accumulate_grad_batches=grad_accum if module.automatic_optimization else 1,
        logger=logger if logger is not None else False,
        default_root_dir=output_dir,
        enable_checkpointing=False,  # weights are saved by the pipeline (adapter only), not as Lightning checkpoints
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        callbacks=callbacks,
    )
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return time.perf_counter() - start
