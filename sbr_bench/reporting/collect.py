"""Read the job folders of one or more sweeps: metrics, status, the job's config and its overrides.

A job folder is any folder holding ``.hydra/overrides.yaml`` (Hydra writes it with
``config.yaml``, the composed job config, and ``hydra.yaml``, whose ``hydra.runtime.choices`` names
the option picked in each config group). Only files are read, never W&B, so a report works on a
machine that has never seen the network.

Jobs that differ only in a replicate key (``seed``, and ``attack.data_seed`` when a sweep varies
it) belong to one *setting*; ``setting_key`` is what they share.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

COLUMNS = (
    ("HS before", "align/harmful_score"),
    ("HS after", "eval/harmful_score"),
    ("FA", "eval/finetune_acc"),
    ("over-refusal", "eval/over_refusal"),
)
KAPPA = "judge/kappa/"  # agreement between judges, written by sbr-bench-judge
HS_KEYS = ("align/harmful_score", "eval/harmful_score")  # the columns a judge fills (before, after the attack)
SEARCH = "search/"  # a worst-case search's objective (sbr_bench.search): floor, feasible, objective
TASK_ANSWERS = "eval/task/"  # where the task answers went after the attack (data.tasks.answer_breakdown)
HIDDEN = ("experiment=", "hydra.", "resume=")  # overrides that do not name a job in the per-job table
REPLICATES = ("seed", "attack.data_seed", "seeds")  # the jobs of one setting differ only in these (seeds: conf/seeds)
DEFENSE_GROUPS = ("defense", "defense@stack")


@dataclass
class Job:
    """One job folder of a sweep."""

    path: Path
    overrides: list[str]  # as in .hydra/overrides.yaml
    values: dict[str, float | None]  # the COLUMNS metrics (None: not in metrics.json)
    status: str  # "ok", "missing", "interrupted", "error: <message>"
    kappas: dict[str, float] = field(default_factory=dict)  # judge/kappa/<a>~<b>, from sbr-bench-judge
    # judge name -> its HS_KEYS values: the job's own judge, and each sbr-bench-judge re-judgement (@<name>)
    judged: dict[str, dict[str, float | None]] = field(default_factory=dict)
    search: dict[str, float] = field(default_factory=dict)  # search/<name> (floor, feasible, objective, ...)
    task_answers: dict[str, float] = field(default_factory=dict)  # named/<label>, wrong/<kind> (percent)
    choices: dict[str, Any] = field(default_factory=dict)  # hydra.runtime.choices
    config: dict[str, Any] = field(default_factory=dict)  # .hydra/config.yaml, unresolved
    curves: dict[str, list[float]] | None = None  # metrics.json "curves" (eval.during_attack)
    ran: dict[str, Any] | None = None  # settings.json: what the job actually ran (sizes, steps, lr, lengths)
    label: str | None = None  # the name shown when several sweep folders are reported together

    @property
    def name(self) -> str:
        return self.label or self.path.name

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def shown_overrides(self) -> str:
        """The overrides that name the job, as the per-job table shows them."""
        return " ".join(o for o in self.overrides if not o.startswith(HIDDEN))

    @property
    def defense(self) -> str:
        """``sbr``, ``vaccine+sbr`` (``defense@stack`` chosen), from the group choices (or the overrides)."""
        picked = [self.choice(group) for group in DEFENSE_GROUPS]
        return "+".join(p for p in picked if p) or "?"

    @property
    def own_judge(self) -> str:
        """The name of the judge that scored the job itself: its ``judge.name``, else the judge option."""
        judge = self.config.get("judge") if isinstance(self.config.get("judge"), dict) else {}
        return str(judge.get("name") or self.choices.get("judge") or "job")

    def choice(self, group: str) -> str | None:
        if self.choices:
            return self.choices.get(group)
        # No hydra.yaml (a folder put together by hand): the override, else the config's default.
        given = override_values(self.overrides).get(group)
        return given if given is not None else ("none" if group == "defense" else None)

    def setting_key(self) -> tuple[str, ...]:
        """The overrides that fix the setting: all but the replicate keys and the defense groups, sorted."""
        kept = [
            o.lstrip("+~")
            for o in self.overrides
            if not o.startswith(("hydra.", "resume=")) and override_key(o) not in (*REPLICATES, *DEFENSE_GROUPS)
        ]
        return tuple(sorted(kept))

    def param(self, dotted: str) -> float | None:
        """A numeric setting such as ``attack.poison_ratio``: the override if given, else config.yaml's value."""
        value = override_values(self.overrides).get(dotted)
        if value is None:
            value = self.config
            for part in dotted.split("."):
                value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str):
            value = yaml.safe_load(value) if "${" not in value else None  # an interpolation: not known here
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def override_values(overrides: list[str]) -> dict[str, str]:
    return {override_key(o): o.split("=", 1)[1] for o in overrides if "=" in o}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def read_job(job: Path) -> Job:
    """Everything the report needs from one job folder; missing files give empty parts, never an error."""
    overrides = _read_yaml(job / ".hydra" / "overrides.yaml") or []
    metrics = _read_json(job / "metrics.json") or {}
    status = _read_json(job / "status.json") or {}
    state = status.get("status", "missing")
    if state == "error":
        state = f"error: {status.get('error', '')}"
    elif state == "ok" and not metrics:
        state = "missing: metrics.json"
    hydra = _read_yaml(job / ".hydra" / "hydra.yaml") or {}
    choices = ((hydra.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    curves = metrics.get("curves")
    read = Job(
        path=job,
        overrides=[str(o) for o in overrides],
        values={key: metrics.get(key) for _, key in COLUMNS},
        status=state,
        kappas={k[len(KAPPA) :]: v for k, v in metrics.items() if k.startswith(KAPPA)},
        search={k[len(SEARCH) :]: v for k, v in metrics.items() if k.startswith(SEARCH)},
        task_answers={k[len(TASK_ANSWERS) :]: v for k, v in metrics.items() if k.startswith(TASK_ANSWERS)},
        choices=choices,
        config=_read_yaml(job / ".hydra" / "config.yaml") or {},
        curves=curves if isinstance(curves, dict) else None,
        ran=_read_json(job / "settings.json"),
    )
    read.judged = judged_scores(metrics, read.own_judge)
    return read


def judged_scores(metrics: dict, own_judge: str) -> dict[str, dict[str, float | None]]:
    """Each judge's HS before and after the attack: the job's own (plain keys), then ``<key>@<name>``."""
    judged = {own_judge: {key: metrics.get(key) for key in HS_KEYS}} if metrics else {}
    for name, value in metrics.items():
        key, at, judge = str(name).partition("@")
        if at and key in HS_KEYS:
            judged.setdefault(judge, dict.fromkeys(HS_KEYS))[key] = value
    return judged


def shared_overrides(keys: list) -> list[str]:
    """The overrides found in every one of ``keys`` (lists of overrides), in the first one's order."""
    return [o for o in keys[0] if all(o in k for k in keys[1:])] if keys else []


def collect(folders: list[Path]) -> list[Job]:
    """Every job folder under ``folders``, in job order (numeric job numbers sort as numbers)."""
    jobs = []
    for folder in folders:
        found = sorted(
            (p.parent.parent for p in folder.rglob(".hydra/overrides.yaml")),
            key=lambda p: [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in p.relative_to(folder).parts],
        )
        for path in found:
            job = read_job(path)
            if len(folders) > 1:  # job numbers repeat across sweeps: "<sweep folder>/<n>"
                job.label = f"{folder.name}/{path.relative_to(folder)}"
            jobs.append(job)
    return jobs
