"""Weights & Biases: one run per job, offline by default, always finished.

Jobs of a multirun under the basic launcher share one process, and Lightning's WandbLogger reuses
an active ``wandb.run``; so every job finishes its run on the way out (``finish_run``), and the
next job starts a fresh one. Secrets never enter the run config: only the resolved job config
(paths, values), never the environment.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def run_name(cfg: DictConfig) -> str:
    """Readable name from the group choices and the seed, e.g. ``sbr+vaccine-hft-p0.1-smollm2_135m-s0``."""
    choices = {}
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
    except ValueError:  # HydraConfig not set (a test calling the pipeline directly)
        pass
    defense = choices.get("defense", "defense")
    if choices.get("defense@stack"):
        defense += f"+{choices['defense@stack']}"
    model = choices.get("model", "model")
    return f"{defense}-{choices.get('attack', 'attack')}-p{cfg.attack.poison_ratio}-{model}-s{cfg.seed}"


def make_logger(cfg: DictConfig):
    """A WandbLogger for this job, or None when ``logger=none``."""
    settings = cfg.get("logger")
    if not settings or not settings.get("wandb"):
        return None
    from pytorch_lightning.loggers import WandbLogger

    w = settings.wandb
    logger = WandbLogger(
        project=w.project,
        entity=w.entity,
        group=w.group,
        job_type=w.job_type,
        name=run_name(cfg),
        tags=list(cfg.get("tags") or []),
        save_dir=str(cfg.paths.output_dir),
        mode=w.mode,
    )
    config = OmegaConf.to_container(cfg, resolve=True)
    logger.experiment.config.update(config, allow_val_change=True)
    return logger


def finish_run(failed: bool) -> None:
    """Close the job's W&B run, marked failed when the job raised."""
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
