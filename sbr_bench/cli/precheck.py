"""What ``sbr-bench`` checks before Hydra starts a job: options, keys and values, one line each.

Hydra reports a missing option or a bad value in many lines, and a bad value inside a sweep only
when its job comes up, possibly hours in. This check runs first, on the same command line, with
Hydra's own machinery, and prints the first problem as one line:

1. every ``group=option`` (also ``group@package=option``, ``+group=option`` and the options of a
   sweep, ``defense=none,sbr``) names an option that Hydra can find, over the whole search path:
   ``conf/``, ``--config-dir``, ``hydra.searchpath`` (``file://`` and ``pkg://``), search-path
   plugins and the ConfigStore (where the launcher and sweeper plugins register theirs);
2. the job's config composes (a key that does not exist, ``attack.lrr=1``, is named);
3. the composed config passes the typed schemas of ``sbr_bench.settings`` - for a sweep under the
   basic sweeper, the config of every job of the grid, so a bad value in the last job fails now.

Nothing is created on disk: a command that fails here leaves no output folder behind. Commands that
only inspect (``--cfg``, ``--info``, ``--help``) get the option check alone.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from sbr_bench import CONF_DIR
from sbr_bench.errors import ConfigError

CONFIG_NAME = "config"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
ATTACKER_SEARCH = "hydra_plugins.sbr_bench_search.attacker_search.AttackerSearchSweeper"


def problem(argv: list[str]) -> str | None:
    """The first problem of the command line as one line, or None when it can run."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)  # a malformed command line: argparse's usage and exit 2
    if (
        args.help
        or args.hydra_help
        or args.shell_completion
        or args.info
        or args.config_path
        or args.experimental_rerun
    ):
        return None  # Hydra answers these itself
    name = args.config_name or CONFIG_NAME
    try:
        loader = config_loader(args.config_dir)
        unknown = unknown_option(loader, name, args.overrides)
        if unknown or args.cfg:
            return unknown
        jobs = job_configs(loader, name, args.overrides, multirun=args.multirun)
        for number, (overrides, cfg) in enumerate(jobs):
            try:
                validate(cfg)
            except ConfigError as err:
                if len(jobs) == 1:
                    raise
                raise ConfigError(f"{err} (job {number} of the sweep: {' '.join(overrides)})") from None
    except ConfigError as err:
        return str(err)
    return None


def option_problem(overrides: list[str], config_dir: str | None = None) -> str | None:
    """Only the option check (``sbr-bench-judge`` composes its judge itself)."""
    try:
        return unknown_option(config_loader(config_dir), CONFIG_NAME, overrides)
    except ConfigError as err:
        return str(err)


def config_loader(config_dir: str | None):
    """Hydra's config loader over the search path ``sbr-bench`` runs with (``--config-dir`` first)."""
    import os

    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path

    search_path = create_config_search_path(str(CONF_DIR))
    if config_dir is not None:
        folder = os.path.abspath(config_dir)
        if not os.path.isdir(folder):
            raise ConfigError(f"--config-dir {config_dir}: no such folder")
        search_path.prepend(provider="command-line", path=f"file://{folder}")
    return ConfigLoaderImpl(config_search_path=search_path)


def unknown_option(loader, name: str, overrides: list[str]) -> str | None:
    """One line naming the first ``group=option`` whose option Hydra cannot find, with the valid ones."""
    from hydra.core.object_type import ObjectType

    for override in parse(overrides):
        if override.is_delete() or override.value_type is None:
            continue
        group = override.key_or_group
        options = loader.get_group_options(group, ObjectType.CONFIG, config_name=name, overrides=overrides)
        if not options:
            continue  # not a config group: a value such as attack.lr=1e-3
        for value in choices(override):
            if value not in options and value != "null":
                key = override.get_key_element().lstrip("+~")
                return f"{key}={value}: no such option; valid options: {', '.join(sorted(options))}"
    return None


def parse(overrides: list[str], loader=None) -> list:
    """Hydra's parsed overrides; with the config loader a glob sweep (``defense=glob(*)``) can expand."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create(config_loader=loader).parse_overrides(overrides)
    except Exception as err:  # Hydra's OverrideParseException: its first line says where
        raise ConfigError(first_line(err)) from None


def choices(override) -> list[str]:
    """The option names an override picks: one, or every value of a sweep (a glob picks existing ones)."""
    from hydra.core.override_parser.types import Glob

    if override.is_sweep_override():
        if isinstance(override.value(), Glob) or not override.is_discrete_sweep():
            return []
        return [str(v) for v in override.sweep_string_iterator()]
    value = override.value()
    return [] if isinstance(value, Glob) else [override.get_value_element_as_str()]


def job_configs(loader, name: str, overrides: list[str], multirun: bool) -> list[tuple[list[str], Any]]:
    """(overrides, composed config) of the job, or of every job of a basic sweeper's grid."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.types import RunMode

    if not multirun:
        return [(overrides, compose(loader, name, overrides, RunMode.RUN))]
    master = compose(loader, name, overrides, RunMode.MULTIRUN)
    if master.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        # Another sweeper (the attacker search) picks its jobs as it goes, and each is checked when it
        # starts; what they share, the config without the searched keys, is checked now.
        if master.hydra.sweeper.get("_target_") == ATTACKER_SEARCH and master.hydra.sweeper.first_trial:
            from hydra_plugins.sbr_bench_search.attacker_search import first_trial_outside

            sweeper = master.hydra.sweeper
            params, first = (OmegaConf.to_container(sweeper[k], resolve=True) for k in ("params", "first_trial"))
            outside = first_trial_outside(params, first)
            if outside:
                raise ConfigError(outside)
        return [([o.input_line for o in parse(overrides) if not o.is_sweep_override()], master)]
    params = [f"{k}={v}" for k, v in (master.hydra.sweeper.get("params") or {}).items()]
    task = [o.input_line for o in parse(overrides) if not o.is_hydra_override()]
    (grid,) = BasicSweeper.split_arguments(parse(params + task, loader), None)
    jobs = []
    for number, job in enumerate(grid):
        try:
            jobs.append((job, loader.load_sweep_config(master, list(job))))
        except Exception as err:
            why = explain_composition(err, loader, name, list(job))
            raise ConfigError(f"{why} (job {number} of the sweep: {' '.join(job)})") from None
    return jobs


def compose(loader, name: str, overrides: list[str], mode):
    try:
        return loader.load_configuration(name, overrides, mode)
    except Exception as err:
        raise ConfigError(explain_composition(err, loader, name, overrides)) from None


def explain_composition(err: Exception, loader, name: str, overrides: list[str]) -> str:
    """Hydra's composition error as one line; an unknown key names the keys that exist beside it."""
    from hydra.types import RunMode

    message = first_line(err)
    if message.startswith("Could not override '"):
        key = message.split("'")[1]
        parent = key.rpartition(".")[0]
        rest = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
        try:
            node = OmegaConf.select(loader.load_configuration(name, rest, RunMode.RUN), parent) if parent else None
        except Exception:
            node = None
        known = sorted(k for k in node if not str(k).startswith("_")) if OmegaConf.is_dict(node) else None
        if known:
            return f"{key}: no such key; the keys of {parent} are: {', '.join(known)} (+{key}=... adds one)"
        if known is not None:
            return f"{key}: no such key; {parent} takes no settings"
        return f"{key}: no such key (+{key}=... adds one)"
    if message.startswith("Ambiguous value for argument"):
        return f"{message}: to sweep over it add -m; a list is key=[a,b], a string with commas is quoted: key='a,b'"
    return message


def validate(cfg) -> None:
    """The schemas of ``sbr_bench.settings`` on a composed config (the Hydra node left out), and the
    worst-case search's reference rule (``sbr_bench.search.check``), which needs the group choices."""
    from sbr_bench import search
    from sbr_bench.settings import validate_job

    settings = validate_job(cfg)
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
    search.check(settings.search, OmegaConf.to_container(choices) if choices is not None else {})


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
