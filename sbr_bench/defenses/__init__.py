"""Defenses against harmful fine-tuning; one module per option of ``conf/defense/``."""

from pathlib import Path


def defense_options() -> list[str]:
    """Every defense option: the YAML files of ``conf/defense/``, sorted (the plots' colours follow this order)."""
    from sbr_bench import CONF_DIR

    return sorted(p.stem for p in (Path(CONF_DIR) / "defense").glob("*.yaml"))
