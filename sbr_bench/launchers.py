"""Hydra launchers: which package extra provides which ``hydra/launcher`` option.

A sweep runs under Hydra's basic launcher (one job after another in one process) unless the user
picks another one; the plugins are optional extras of this package (``pyproject.toml``):

- ``joblib``, ``local_parallel``: extra ``joblib``, hydra-joblib-launcher (jobs in loky worker processes);
- ``submitit_local``, ``submitit_slurm``, ``slurm``: extra ``slurm``, hydra-submitit-launcher (SLURM job arrays);
- ``ray``, ``ray_cluster``: extra ``ray``, hydra-ray-launcher (one Ray task per job).

``local_parallel``, ``slurm`` and ``ray_cluster`` are this project's options (``conf/hydra/launcher/``),
each extending the plugin's own with defaults for this benchmark. The plugins register their
options in Hydra's ConfigStore when Hydra scans ``hydra_plugins``; ``plugin_options`` lists them,
so that the CLI's one-line check of ``group=option`` knows them too, and ``missing_plugin`` turns a
launcher whose plugin is not installed into one line saying which extra to install.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

# hydra/launcher option -> (the plugin's package, the extra that installs it)
PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    "local_parallel": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
    "ray_cluster": ("hydra_plugins.hydra_ray_launcher", "ray"),
}
LAUNCHER = re.compile(r"^\+{0,2}hydra/launcher=(?P<option>[\w.-]+)$")


def installed(package: str) -> bool:
    """True when ``package`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(package) is not None
    except ModuleNotFoundError:  # the parent namespace package hydra_plugins is absent
        return False


def missing_plugin(args: list[str]) -> str | None:
    """One line naming the extra to install when ``hydra/launcher=<option>`` needs a plugin that is absent."""
    for arg in args:
        match = LAUNCHER.match(arg)
        if match and match["option"] in PLUGINS:
            package, extra = PLUGINS[match["option"]]
            if not installed(package):
                return (
                    f"hydra/launcher={match['option']} needs the {extra} extra; install it with: "
                    f"pip install -e '.[{extra}]' (in the repository) or pip install 'sbr-bench[{extra}]'"
                )
    return None


def plugin_options(group: str) -> set[str]:
    """The options of a ``hydra/...`` group that Hydra itself and the installed plugins provide."""
    if not group.startswith("hydra/"):
        return set()
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # scans hydra_plugins: each plugin stores its options in the ConfigStore
    try:
        names = ConfigStore.instance().list(group)
    except OSError:  # no plugin registers anything in this group
        names = []
    return {Path(name).stem for name in names}
