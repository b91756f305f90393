"""Run from outside the repository with a wheel-installed sbr-bench: every public entry point imports,
the configs and bundled data come from the installed package, and each command answers --help."""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import subprocess
import sys
from pathlib import Path

ENTRY_POINTS = [
    "sbr_bench.cli.run",
    "sbr_bench.cli.report",
    "sbr_bench.cli.judge",
    "sbr_bench.cli.export",
    "sbr_bench.pipeline",
    "sbr_bench.job",
    "sbr_bench.defenses.sbr",
    "sbr_bench.judges.keyword",
    "sbr_bench.reporting.callback",
    "hydra_plugins.sbr_bench_search.attacker_search",
]

# The wheel's own requirements (not its extras) are all installed, at versions it accepts.
from packaging.requirements import Requirement  # noqa: E402

for line in metadata.requires("sbr-bench") or []:
    requirement = Requirement(line)
    if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
        continue  # an optional extra
    installed = metadata.version(requirement.name)
    assert requirement.specifier.contains(installed, prereleases=True), f"{requirement} but {installed} is installed"

for name in ENTRY_POINTS:
    importlib.import_module(name)
import sbr_bench  # noqa: E402
from sbr_bench.data.bundled import load_pools  # noqa: E402

package = Path(sbr_bench.__file__).resolve().parent
assert package.is_relative_to(Path(sys.prefix).resolve()), f"sbr_bench imported from {package}, not the wheel"
assert package / "conf" == sbr_bench.CONF_DIR and (sbr_bench.CONF_DIR / "config.yaml").is_file(), sbr_bench.CONF_DIR
assert len(load_pools().eval_harmful) > 0  # the bundled data is package data

for command in (
    ["sbr-bench", "--help"],
    ["sbr-bench-report", "--help"],
    ["sbr-bench-judge", "--help"],
    ["sbr-bench-export", "--help"],
):
    subprocess.run(command, check=True, capture_output=True)
job = subprocess.run(
    ["sbr-bench", "model=toy", "defense=sbr", "--cfg", "job"], check=True, capture_output=True, text=True
)
assert "sbr_bench.defenses.sbr.SBR" in job.stdout, job.stdout[-500:]
print(f"wheel install OK: {len(ENTRY_POINTS)} modules, 4 commands, configs from {sbr_bench.CONF_DIR}", file=sys.stderr)
