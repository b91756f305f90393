"""sbr-bench: a benchmark of defenses against harmful fine-tuning of safety-aligned LLMs."""

from pathlib import Path

__version__ = "0.1.0"

# conf/ lives at the top of the repository (an editable install keeps it there); Hydra is given its
# absolute path so that `sbr-bench` works from any directory.
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
