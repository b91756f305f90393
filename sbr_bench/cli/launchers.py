"""Hydra plugins: which package extra provides which ``hydra/launcher`` or ``hydra/sweeper`` option.

A sweep runs under Hydra's basic launcher (one job after another in one process) and its basic
sweeper (the grid of the command line and the preset) unless the user picks another one; the
plugins are optional extras of this package (``pyproject.toml``):

- ``joblib``, ``local_parallel``: extra ``joblib``, hydra-joblib-launcher (jobs in loky worker processes);
- ``submitit_local``, ``submitit_slurm``, ``slurm``: extra ``slurm``, hydra-submitit-launcher (SLURM job arrays);
- ``ray``, ``ray_cluster``: extra ``ray``, hydra-ray-launcher (one Ray task per job);
- ``hydra/sweeper=optuna``: extra ``optuna``, hydra-optuna-sweeper (a search instead of a grid);
- ``hydra/sweeper=attacker_search`` (this package's ``hydra_plugins/sbr_bench_search``, built on the
  Optuna sweeper) and the presets that pick it, ``experiment=attacker_search*``: extra ``optuna``.

``local_parallel``, ``slurm`` and ``ray_cluster`` are this project's options (``conf/hydra/launcher/``),
each extending the plugin's own with defaults for this benchmark. The plugins register their
options in Hydra's ConfigStore when Hydra scans ``hydra_plugins``, which is where the option check
(``sbr_bench.cli.precheck``) finds them; ``missing_plugin`` turns an option whose plugin is not installed
into one line saying which extra to install.
"""

from __future__ import annotations

import importlib.util
import re

# (hydra/<group>, option) -> (the plugin's package, the extra that installs it)
PLUGINS = {
    ("launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    ("launcher", "local_parallel"): ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    ("launcher", "submitit_local"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("launcher", "submitit_slurm"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("launcher", "slurm"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("launcher", "ray"): ("hydra_plugins.hydra_ray_launcher", "ray"),
    ("launcher", "ray_cluster"): ("hydra_plugins.hydra_ray_launcher", "ray"),
    ("sweeper", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
    ("sweeper", "attacker_search"): ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
}
SEARCH_PRESET = re.compile(r"^experiment=(?P<name>attacker_search[\w-]*)$")  # they pick hydra/sweeper=attacker_search
PLUGIN_CHOICE = re.compile(r"^\+{0,2}hydra/(?P<group>launcher|sweeper)=(?P<option>[\w.-]+)$")


def installed(package: str) -> bool:
    """True when ``package`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(package) is not None
    except ModuleNotFoundError:  # the parent namespace package hydra_plugins is absent
        return False


def missing_plugin(args: list[str]) -> str | None:
    """One line naming the extra to install when ``hydra/launcher=`` or ``hydra/sweeper=`` needs an absent plugin."""
    for arg in args:
        match = PLUGIN_CHOICE.match(arg)
        if match and (match["group"], match["option"]) in PLUGINS:
            package, extra = PLUGINS[match["group"], match["option"]]
            if not installed(package):
                return (
                    f"hydra/{match['group']}={match['option']} needs the {extra} extra; install it with: "
                    f"pip install -e '.[{extra}]' (in the repository) or pip install 'sbr-bench[{extra}]'"
                )
        preset = SEARCH_PRESET.match(arg)
        if preset and not installed("hydra_plugins.hydra_optuna_sweeper"):
            grid = preset["name"].replace("attacker_search", "attacker_grid")
            return (
                f"experiment={preset['name']} searches with the Optuna sweeper, which needs the optuna extra: "
                f"pip install -e '.[optuna]' (in the repository) or pip install 'sbr-bench[optuna]'; "
                f"without it, experiment={grid} runs the same space as a grid"
            )
    return None
