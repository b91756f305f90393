"""What the stages of one job share, built once by ``pipeline.run`` after the model has loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbr_bench.data.pools import Pools


@dataclass(frozen=True)
class JobContext:
    """The job's model config (as the caches see it), tokenizer, data, trainer settings, W&B logger
    (None with ``logger=none``), job folder and cache folder."""

    model_cfg: dict
    tokenizer: Any
    pools: Pools
    trainer_cfg: dict
    logger: Any
    output_dir: Path
    cache_dir: Path
