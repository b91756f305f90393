"""Shared helpers of the benchmark scripts: the machine record, the JSON result, config composition.

Every script measures ratios side by side in one run (these machines are noisy by about 15 %
between runs), prints a one-line result and writes a JSON record under ``benchmarks/results/``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What the figures were measured on."""
    import pytorch_lightning
    import torch
    import transformers

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "device": device,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
    }


def median_range(values: list[float], digits: int = 1) -> str:
    """``median [min, max]`` of the rounds' values, the form every figure of these scripts is printed in."""
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def compose(overrides: list[str]):
    """The job config of ``sbr-bench <overrides>`` (without the Hydra node)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sbr_bench import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def write_record(name: str, record: dict) -> Path:
    """``benchmarks/results/<name>.json`` with the machine and the time of the run."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(), **record}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
