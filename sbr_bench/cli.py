"""``sbr-bench``: the Hydra application. ``sbr-bench --help`` lists the config groups."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from sbr_bench import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """Run one job (or, with ``-m``, one job of a sweep)."""
    from sbr_bench.job import run_job  # heavy imports only once Hydra has parsed the command line

    return run_job(cfg)


if __name__ == "__main__":
    main()
