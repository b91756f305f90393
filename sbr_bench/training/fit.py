"""Running one training stage with Lightning: data loader, Trainer, fit."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from sbr_bench.data.formatting import IGNORE_INDEX, PadCollator, encode_pair
from sbr_bench.data.pools import Pair
from sbr_bench.errors import ConfigError
from sbr_bench.training.module import SafetyModule


def make_loader(
    tokenizer, pairs: Sequence[Pair], max_length: int, batch_size: int, seed: int, window: int = 1
) -> DataLoader:
    """Shuffled loader of response-masked examples; the shuffle order depends only on ``seed``.

    ``window`` > 1 (``attack.ce_normalization=window`` with ``grad_accum`` micro-batches per step):
    every batch also carries ``window_tokens``, the answer tokens of its whole accumulation window,
    in the same shuffle order as without it.
    """
    examples = [encode_pair(tokenizer, p.prompt, p.response, max_length) for p in pairs]
    generator = torch.Generator().manual_seed(seed)
    collate = PadCollator(tokenizer.pad_token_id)
    if window > 1:
        batches = WindowBatches([answer_tokens(e) for e in examples], batch_size, window, generator)
        # The loader draws its workers' base seed from the generator before the sampler's permutation,
        # as with shuffle=True: handing it the same generator keeps the two orders identical.
        return DataLoader(
            WindowedExamples(examples), batch_sampler=batches, generator=generator, collate_fn=collate, num_workers=0
        )
    return DataLoader(
        examples, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate, num_workers=0
    )


def answer_tokens(example: dict[str, list[int]]) -> int:
    """The tokens the task CE scores (position t predicts token t + 1: the first label never is)."""
    return sum(label != IGNORE_INDEX for label in example["labels"][1:])


class WindowBatches(Sampler[list[tuple[int, int]]]):
    """Shuffled batches, each index paired with its accumulation window's answer-token count.

    The order is the ``RandomSampler`` that ``DataLoader(shuffle=True)`` iterates, on the same
    generator, so the batches are the same as without the counts, epoch after epoch; the last batch of an epoch may be
    smaller and the last window shorter, and their counts are those of what they hold. This is the
    ``num_items_in_batch`` transformers >= 4.46 computes by reading a window's batches ahead.
    """

    def __init__(self, tokens: list[int], batch_size: int, window: int, generator: torch.Generator):
        self.tokens, self.batch_size, self.window = tokens, batch_size, window
        self.order = RandomSampler(range(len(tokens)), generator=generator)  # what shuffle=True iterates

    def __len__(self) -> int:
        return math.ceil(len(self.tokens) / self.batch_size)

    def __iter__(self):
        order = list(self.order)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for start in range(0, len(batches), self.window):
            window = batches[start : start + self.window]
            count = sum(self.tokens[i] for batch in window for i in batch)
            for batch in window:
                yield [(i, count) for i in batch]


class WindowedExamples(Dataset):
    """Examples looked up by ``(index, window_tokens)``, the count added to the example."""

    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, count = key
        return {**self.examples[index], "window_tokens": count}


def stage_loaders(
    defense, pools, pairs: Sequence[Pair], tokenizer, max_length: int, batch_size: int, seed: int, window: int = 1
) -> tuple[DataLoader, dict[str, DataLoader]]:
    """The stage's loader (its pairs plus the defense's ``"mix"`` data) and one loader per extra stream.

    Each stream is shuffled with its own seed derived from the stage's, so adding a stream never
    changes the order of the stage's own batches. ``window``: see ``make_loader`` (the stage's
    loader only; a stream's batches, e.g. Lisa's alignment batches, keep the micro-batch mean).
    """
    extra = dict(defense.extra_data(pools))
    loader = make_loader(tokenizer, [*pairs, *extra.pop("mix", [])], max_length, batch_size, seed, window)
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
