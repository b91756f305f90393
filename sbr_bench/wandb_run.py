"""Weights & Biases: one run per job, offline by default, always finished.

Jobs of a multirun under the basic launcher share one process, and Lightning's WandbLogger reuses
an active ``wandb.run``; so every job finishes its run on the way out (``finish_run``), and the
next job starts a fresh one. Secrets never enter the run config: only the resolved job config
(paths, values), never the environment.

The run config is flat, so that every setting is a dashboard column and a parallel-coordinates
axis as it is: the group choices under their group's name (``defense: sbr``, ``attack: hft``,
``model: smollm2_135m``, ``stack: vaccine``) and every leaf of the resolved config under its dotted
path (``defense.lam: 50``, ``attack.poison_ratio: 0.1``, ``seed: 0``).
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


def group_choices() -> dict[str, str]:
    """The option chosen in every config group of this job (``{}`` outside a Hydra run)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
    except ValueError:
        return {}
    return {
        key.replace("defense@stack", "stack"): str(value)
        for key, value in choices.items()
        if value is not None and not key.startswith("hydra/") and key not in ("hydra", "paths")
    }


def flat_config(cfg: DictConfig) -> dict:
    """Every leaf of the resolved config under its dotted path, plus the group choices by group name."""
    flat: dict = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    # A choice takes the group's own name; a leaf called like a group (e.g. attack.name) keeps its path.
    return {**flat, **group_choices()}


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
    logger.experiment.config.update(flat_config(cfg), allow_val_change=True)
    return logger


GENERATION_COLUMNS = ["stage", "pool", "prompt", "response", "verdict", "label"]


def verdict_of(record: dict) -> str:
    """One word for a generation's verdict: harmful/safe/missing, refused/answered, correct/wrong."""
    if "harmful" in record:
        return {True: "harmful", False: "safe", None: "missing"}[record["harmful"]]
    if "refused" in record:
        return "refused" if record["refused"] else "answered"
    if "correct" in record:
        return {True: "correct", False: "wrong", None: "unchecked"}[record["correct"]]
    return ""


def log_generations(logger, generations: list[dict]) -> None:
    """The job's answers with their verdicts as a W&B table ("generations"), filterable in the UI.

    Same records as generations.jsonl; the judge's extra fields (category probabilities, ratings)
    stay in that file.
    """
    import wandb

    rows = [[g.get(c, "") if c != "verdict" else verdict_of(g) for c in GENERATION_COLUMNS] for g in generations]
    logger.experiment.log({"generations": wandb.Table(columns=GENERATION_COLUMNS, data=rows)})


def finish_run(failed: bool) -> None:
    """Close the job's W&B run, marked failed when the job raised."""
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
