"""``sbr-bench``: the Hydra application. ``sbr-bench --help`` lists the config groups."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from sbr_bench import CONF_DIR
from sbr_bench.launchers import missing_plugin, plugin_options

# `group=option`, `group@package=option`, `+group=option`, and comma lists of options in sweeps.
CHOICE = re.compile(r"^\+{0,2}(?P<group>[A-Za-z_][\w/]*)(?:@[\w.]+)?=(?P<values>[\w.,-]+)$")
SEARCHPATH = re.compile(r"^hydra\.searchpath=\[(?P<paths>.*)\]$")


def config_dirs(args: list[str]) -> list[Path]:
    """conf/ and the folders a ``hydra.searchpath=[file://...]`` override adds."""
    dirs = [Path(CONF_DIR)]
    for arg in args:
        match = SEARCHPATH.match(arg)
        if match:
            for entry in match["paths"].split(","):
                entry = entry.strip().strip("'\"")
                if entry.startswith("file://"):
                    dirs.append(Path(entry[len("file://") :]))
    return dirs


def unknown_option(args: list[str]) -> str | None:
    """One line naming the first ``group=option`` whose option does not exist, with the valid ones.

    Hydra says the same in a multi-line message; this says it in one line, before anything runs.
    Only plain options of existing groups are checked; everything else is left to Hydra.
    """
    dirs = config_dirs(args)
    for arg in args:
        match = CHOICE.match(arg)
        if not match:
            continue
        group = match["group"]
        folders = [d / group for d in dirs if (d / group).is_dir()]
        if not folders:
            continue  # not a config group (a value override such as seed=1)
        # hydra/launcher=joblib etc.: options of installed Hydra plugins are valid beside conf/'s files.
        valid = sorted({p.stem for f in folders for p in f.glob("*.yaml")} | plugin_options(group))
        for value in match["values"].split(","):
            if value not in valid and value != "null":
                name = arg.split("=", 1)[0].lstrip("+")
                return f"{name}={value}: no such option; valid options: {', '.join(valid)}"
    return None


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def run(cfg: DictConfig) -> float:
    """Run one job (or, with ``-m``, one job of a sweep)."""
    from sbr_bench.job import run_job  # heavy imports only once Hydra has parsed the command line

    return run_job(cfg)


def main() -> None:
    """Entry point of ``sbr-bench``."""
    problem = missing_plugin(sys.argv[1:]) or unknown_option(sys.argv[1:])
    if problem:
        print(f"sbr-bench: error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    run()


if __name__ == "__main__":
    main()
