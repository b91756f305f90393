"""Weights & Biases: one run per job, offline by default, always finished.

Jobs of a multirun under the basic launcher share one process, and Lightning's WandbLogger reuses
an active ``wandb.run``; so every job finishes its run on the way out (``finish_run``), and the
next job starts a fresh one. Secrets never enter the run config: only the resolved job config
(paths, values), never the environment.

The run config is the resolved job config, nested as W&B recommends (``defense: {lam: 50}``, shown
and filtered as ``defense.lam``; no dots inside key names), plus ``choices``: the option picked in
each config group (``choices.defense: sbr``, ``choices.attack: hft``, ``choices.model: toy``,
``choices.stack: vaccine``), for filtering and grouping in a dashboard.

Run names are unique within a sweep: the defense, attack and model, then every override that
varies across the sweep (its axes, ``sweep.json``), then the seed, e.g.
``sbr-hft-smollm2_135m-defense.lam=5-s0``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from sbr_bench import runtime

log = logging.getLogger(__name__)

NAMED = ("defense", "defense@stack", "attack", "model", "seed")  # always in the name, in its fixed part
NOT_NAMED = ("experiment", "resume", "seeds")  # presets and flags: they are not the job's own setting


def run_name(cfg: DictConfig) -> str:
    """``<defense>[+<stack>]-<attack>-<model>[-<override>...]-s<seed>``: the overrides that vary in the
    sweep (all of the job's own overrides when the sweep's axes are unknown, or in a single run)."""
    chosen = runtime.choices()
    defense = chosen.get("defense") or "defense"
    if chosen.get("defense@stack"):
        defense += f"+{chosen['defense@stack']}"
    parts = [defense, chosen.get("attack") or "attack", chosen.get("model") or "model"]
    axes = runtime.sweep_axes()
    for override in runtime.task_overrides():
        key = runtime.override_key(override)
        if key in NAMED or key in NOT_NAMED or key.startswith("hydra"):
            continue
        if axes is None or key in axes:
            parts.append(override.lstrip("+~"))
    return "-".join([*parts, f"s{cfg.seed}"])


def group_choices() -> dict[str, str]:
    """The option chosen in every config group of this job (``{}`` outside a Hydra run)."""
    return {
        key.replace("defense@stack", "stack"): str(value)
        for key, value in runtime.choices().items()
        if value is not None and not key.startswith("hydra/") and key not in ("hydra", "paths")
    }


def run_config(cfg: DictConfig) -> dict:
    """The resolved job config, nested, with the group choices under ``choices``."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    return {**config, "choices": group_choices()}


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
    logger.experiment.config.update(run_config(cfg), allow_val_change=True)
    return logger


GENERATION_COLUMNS = ["stage", "pool", "prompt_id", "prompt", "response", "verdict", "label", "category", "truncated"]


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


def log_worst_cases(settings: DictConfig | None, rows: list, folder) -> None:
    """One W&B run per worst-case row of a finished search or grid (job type ``worst_case``, tag ``worst-case``).

    Its config names the attack that reached the worst case and the job folder that holds it; its
    summary holds the section's figures, so a dashboard can put each defense's worst case beside its
    default-attack runs. ``settings`` is the sweep's ``logger`` node (None: ``logger=none``, nothing logged).
    """
    if not settings or not settings.get("wandb"):
        return
    import wandb

    from sbr_bench.reporting.worst_case import attack_of

    w = settings.wandb
    for row in rows:
        name = "-".join(["worst-case", row.defense, *row.setting])
        worst, default = row.worst, row.default
        run = wandb.init(
            project=w.project,
            entity=w.entity,
            group=w.group,
            job_type="worst_case",
            name=name,
            tags=["worst-case"],
            dir=str(folder),
            mode=w.mode,
            reinit="create_new",
            config={
                "defense": row.defense,
                "setting": " ".join(row.setting),
                "worst_attack": attack_of(worst, digits=None) if worst else None,
                "worst_job": str(worst.path) if worst else None,
            },
        )
        run.summary.update(
            {
                "worst_case/harmful_score": row.worst_hs,
                "worst_case/finetune_acc": worst.values.get("eval/finetune_acc") if worst else None,
                "worst_case/default_harmful_score": default.values.get("eval/harmful_score") if default else None,
                "worst_case/median_harmful_score": row.median_hs,
                "worst_case/fa_floor": row.floor,
                "worst_case/trials_feasible": len(row.feasible),
                "worst_case/trials_finished": len(row.finished),
                "worst_case/trials_run": len(row.jobs),
            }
        )
        run.finish()


def find_run(job: Path) -> tuple[str, str] | None:
    """(run id, mode) of a job's W&B run, from its folder ``<job>/wandb/[offline-]run-<time>-<id>``.

    The earliest folder is the job's own run (a run updated since, e.g. by ``sbr-bench-judge --wandb``,
    adds a folder with the same id). None when the job logged no run (``logger=none``).
    """
    runs = [p for p in (Path(job) / "wandb").glob("*run-*-*") if p.is_dir() and p.name.count("-") >= 3]
    if not runs:
        return None
    first = min(runs, key=lambda p: p.name.removeprefix("offline-"))  # run-<yyyymmdd_hhmmss>-<id>
    return first.name.rsplit("-", 1)[1], "offline" if first.name.startswith("offline-") else "online"


def add_to_run(job: Path, values: dict[str, float]) -> tuple[str, str] | None:
    """Add ``values`` to the summary of a finished job's W&B run; returns (run id, mode), None if it has none.

    The run is resumed under its own id, in the mode it ran in: an offline run gains a second
    offline folder with the same id (``wandb sync`` uploads a run's folders in the order they were
    made, so the new scores land in the same run); an online run is resumed on the server (this needs
    the network). Project and entity come from the job's ``.hydra/config.yaml``.
    """
    found = find_run(job)
    if found is None:
        return None
    import wandb

    run_id, mode = found
    config_path = Path(job) / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    settings = ((config or {}).get("logger") or {}).get("wandb") or {}

    def plain(key: str) -> str | None:  # an unresolved interpolation (${...}) is not a value here
        value = settings.get(key)
        return None if value is None or "${" in str(value) else str(value)

    run = wandb.init(
        id=run_id,
        project=plain("project") or "sbr-bench",
        entity=plain("entity"),
        dir=str(job),
        mode=mode,
        resume="allow",
        reinit="create_new",
    )
    run.summary.update(values)
    run.finish()
    return run_id, mode
