"""What Hydra knows about the running job: its group choices, its overrides, and its sweep's axes.

Outside a Hydra run (a test or a script calling the pipeline directly) every answer is empty.

The sweep's axes - the keys whose value changes from job to job - are known only to the process
that starts the sweep. ``record_sweep`` (called by the sweep's Hydra callback before the first job)
writes them into ``<sweep folder>/sweep.json``; each job reads them back with ``sweep_axes``, under
any launcher whose jobs see the sweep folder (local processes, SLURM on a shared file system).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SWEEP_FILE = "sweep.json"


def hydra_config() -> Any | None:
    """Hydra's node of the running job, or None outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get()
    except ValueError:
        return None


def choices() -> dict[str, Any]:
    """The option chosen in every config group (``{"defense": "sbr", "defense@stack": None, ...}``)."""
    hydra = hydra_config()
    return dict(hydra.runtime.choices) if hydra is not None else {}


def task_overrides() -> list[str]:
    """The job's own command-line overrides (for a sweep job: its point of the grid)."""
    hydra = hydra_config()
    return list(hydra.overrides.task) if hydra is not None else []


def is_multirun() -> bool:
    """True inside a ``-m`` sweep."""
    from hydra.types import RunMode

    hydra = hydra_config()
    return hydra is not None and hydra.mode == RunMode.MULTIRUN


def override_key(override: str) -> str:
    """``+defense.lam=5`` -> ``defense.lam``."""
    return override.lstrip("+~").split("=", 1)[0]


def varying_keys(sweep_overrides: list[str]) -> list[str]:
    """The keys a sweep gives more than one value (``defense=none,sbr``, ``seed=range(3)``, a search space)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob

    varying = []
    for override in OverridesParser.create().parse_overrides(sweep_overrides):
        if not override.is_sweep_override():
            continue
        # A list or range with one value does not vary; an interval (a search space) or a glob over a
        # config group (``defense=glob(*)``, expanded by the sweeper) always does.
        glob = isinstance(override.value(), Glob)
        if glob or not override.is_discrete_sweep() or len(list(override.sweep_string_iterator())) > 1:
            varying.append(override.get_key_element().lstrip("+~"))
    return varying


def record_sweep(config) -> None:
    """Write ``sweep.json`` (the overrides and the varying keys) into the sweep folder of ``config``."""
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    task = list(config.hydra.overrides.task)
    folder = Path(config.hydra.sweep.dir)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"overrides": task, "params": params, "varying": varying_keys(params + task)}
    from sbr_bench.io import write_json_atomic

    write_json_atomic(folder / SWEEP_FILE, record)


def sweep_axes() -> list[str] | None:
    """The varying keys of this job's sweep (``sweep.json``), or None if unknown (or not a sweep)."""
    hydra = hydra_config()
    if hydra is None or not is_multirun():
        return None
    path = Path(hydra.sweep.dir) / SWEEP_FILE
    try:
        return list(json.loads(path.read_text())["varying"])
    except (OSError, ValueError, KeyError):
        return None
