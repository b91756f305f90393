"""The task wrapper around one job: status.json, W&B finished or marked failed, one-line user errors."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from omegaconf import DictConfig

from sbr_bench.errors import ConfigError
from sbr_bench.io import write_json_atomic
from sbr_bench.wandb_run import finish_run

log = logging.getLogger(__name__)


def is_multirun() -> bool:
    """True inside a ``-m`` sweep."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def user_error(err: BaseException) -> ConfigError | None:
    """The ConfigError behind ``err``, if any (Hydra's instantiate wraps what a constructor raises)."""
    while err is not None:
        if isinstance(err, ConfigError):
            return err
        err = err.__cause__
    return None


def run_job(cfg: DictConfig) -> float:
    """Run the pipeline; always leave ``status.json`` and a finished W&B run behind.

    Returns the harmful score after the attack (a float, so that a sweeper could optimise it and so
    that no model stays referenced between the jobs of a multirun).
    """
    from sbr_bench import pipeline

    status_path = Path(cfg.paths.output_dir) / "status.json"
    try:
        metrics = pipeline.run(cfg)
    except Exception as err:
        cause = user_error(err)
        message = str(cause) if cause else f"{type(err).__name__}: {err}"
        write_json_atomic(status_path, {"status": "error", "error": message, "traceback": traceback.format_exc()})
        finish_run(failed=True)
        if cause and not is_multirun():
            # Bad input: one line saying what is wrong and how to fix it, no traceback wall.
            print(f"sbr-bench: error: {message}", file=sys.stderr)
            raise SystemExit(2) from None
        log.error("job failed: %s: %s", type(err).__name__, err)
        raise
    write_json_atomic(status_path, {"status": "ok", "defenses": pipeline.defense_names(cfg)})
    finish_run(failed=False)
    return metrics["eval/harmful_score"]
