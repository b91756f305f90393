"""sbr-bench: a benchmark of defenses against harmful fine-tuning of safety-aligned LLMs."""

from pathlib import Path

__version__ = "0.1.0"

# The Hydra configs. A wheel install carries them inside the package (sbr_bench/conf); a source
# checkout and an editable install read conf/ at the top of the repository. Hydra is given the
# absolute path, so that `sbr-bench` works from any directory.
_PACKAGED_CONF = Path(__file__).resolve().parent / "conf"
CONF_DIR = _PACKAGED_CONF if _PACKAGED_CONF.is_dir() else Path(__file__).resolve().parent.parent / "conf"
