"""``sbr-bench``: the Hydra application. ``sbr-bench --help`` lists the config groups."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from sbr_bench import CONF_DIR
from sbr_bench.cli.launchers import missing_plugin


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def run(cfg: DictConfig) -> float:
    """Run one job (or, with ``-m``, one job of a sweep)."""
    from sbr_bench.job import run_job  # heavy imports only once Hydra has parsed the command line

    return run_job(cfg)


def main() -> None:
    """Entry point of ``sbr-bench``: the pre-check (``sbr_bench.cli.precheck``), then Hydra."""
    from sbr_bench.cli.precheck import problem

    found = missing_plugin(sys.argv[1:]) or problem(sys.argv[1:])
    if found:
        print(f"sbr-bench: error: {found}", file=sys.stderr)
        raise SystemExit(2)
    run()


if __name__ == "__main__":
    main()
