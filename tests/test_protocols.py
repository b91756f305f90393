"""docs/protocols.md cannot drift from the configs: every row is checked against every job it names.

Each table of the page follows a ``Presets: `a`, `b` `` line. For every preset, every job of its sweep
is composed the way ``sbr-bench -m experiment=<preset>`` composes it and validated as a job starts;
then each row's key must hold the row's value in every job the row's condition selects (or, for a
``(sweep)`` row, the jobs together must take exactly the listed values).
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from omegaconf._utils import get_yaml_loader

from sbr_bench.cli import precheck
from sbr_bench.settings import validate_job

PAGE = Path(__file__).resolve().parent.parent / "docs" / "protocols.md"
KEY = re.compile(r"^`(?P<key>[^`]+)`(?: if (?P<where>.+))?$")
HERE = re.compile(r"^`(?P<value>[^`]*)`(?P<sweep> \(sweep(?P<at_least>, at least)?\))?$")


def tables() -> list[tuple[list[str], list[dict]]]:
    """(presets, rows) of every table of the page; a row is a dict of its cells by header."""
    found: list[tuple[list[str], list[dict]]] = []
    presets: list[str] | None = None
    header: list[str] | None = None
    for line in PAGE.read_text().splitlines():
        if line.startswith("Presets:"):
            presets, header = re.findall(r"`([^`]+)`", line), None
            found.append((presets, []))
        elif presets is not None and line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if header is None:
                header = cells
            elif not set(line) <= set("|-: "):
                found[-1][1].append(dict(zip(header, cells, strict=True)))
        elif presets is not None and header is not None and not line.strip():
            presets = header = None  # the table ended
    return found


def condition(where: str | None, choices: dict) -> bool:
    """``defense=booster|vaccine, data!=beavertails_sst2``: every clause must hold for the job's choices."""
    for clause in (where or "").replace("\\|", "|").split(","):
        if not clause.strip():
            continue
        name, negated, options = re.match(r"\s*([\w@/]+)\s*(!?)=\s*(.+)", clause).groups()
        if (str(choices.get(name)) in options.strip().split("|")) == bool(negated):
            return False
    return True


@cache
def jobs(preset: str) -> list[tuple[dict, object]]:
    """(choices, composed config) of every job of the preset's sweep, each validated as a job starts."""
    loader = precheck.config_loader(None)
    composed = precheck.job_configs(loader, "config", [f"experiment={preset}"], multirun=True)
    result = []
    offline = os.environ.pop("HF_HUB_OFFLINE", None)  # hub model ids are checked against the cache when offline
    try:
        for _, cfg in composed:
            validate_job(cfg)
            result.append((OmegaConf.to_container(cfg.hydra.runtime.choices), cfg))
    finally:
        if offline is not None:
            os.environ["HF_HUB_OFFLINE"] = offline
    return result


ROWS = [(presets, row) for presets, rows in tables() for row in rows]


def test_the_page_has_a_table_for_every_paper_preset():
    presets = {preset for names, _ in ROWS for preset in names}
    assert {"sbr_table1", "poison_ratio", "persistent_hft", "lambda_sweep", "num_anchors", "lisa_sst2"} <= presets
    assert len(ROWS) > 100
    for names, row in ROWS:
        assert re.match(r"(same|scaled|deviation)\b", row["status"]), (names, row)
        assert row["source"], (names, row)


@pytest.mark.parametrize(("presets", "row"), ROWS, ids=[f"{'+'.join(p)}:{r['key']}" for p, r in ROWS])
def test_every_row_holds_in_every_job_it_names(presets, row):
    key_cell, here_cell = KEY.match(row["key"]), HERE.match(row["here"])
    assert key_cell and here_cell, f"row cells not in the page's format: {row}"
    key, where = key_cell["key"], key_cell["where"]
    expected = yaml.load(here_cell["value"], Loader=get_yaml_loader())  # OmegaConf's YAML: 1.0e9 is a float
    checked = 0
    for preset in presets:
        # A table shared by several presets may name a defense only some of them sweep.
        selected = [cfg for choices, cfg in jobs(preset) if condition(where, choices)]
        assert selected or where, f"{preset}: no job"
        values = [OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(cfg, key)}))["v"] for cfg in selected]
        if here_cell["at_least"]:  # a glob(*) sweep: the paper's values, and whatever options were added
            assert {str(v) for v in expected} <= {str(v) for v in values}, (preset, key, values)
        elif here_cell["sweep"]:
            assert sorted({str(v) for v in values}) == sorted(str(v) for v in expected), (preset, key, values)
        else:
            wrong = {str(v) for v in values if v != expected}
            assert not wrong, f"{preset}: {key} is {wrong} in some jobs, the page says {expected!r}"
        checked += len(values)
    assert checked, f"no job of {presets} matches {where!r}"


# Official alignment step counts: epochs x ceil(samples / batch) of each script (one GPU, grad_accum 1).
OFFICIAL_ALIGN_STEPS = {
    "vaccine": 50 * 2000 // 5,  # Vaccine Vaccine.sh: 50 epochs over 2000 is_safe pairs at batch 5
    "booster": 20 * -(-4999 // 10),  # Booster smooth_align.sh: 20 epochs over 4999 refusals at batch 10
    "repnoise_hft": 20 * -(-4999 // 5),  # Booster repNoise.sh: batch 5
}


def test_sbr_table1_aligns_each_alignment_stage_defense_for_its_official_step_count():
    for choices, cfg in jobs("sbr_table1"):
        defense = choices["defense"]
        if defense not in OFFICIAL_ALIGN_STEPS or choices["data"] != "beavertails_sst2":
            continue
        align = cfg.align
        pool = cfg.data.beavertails.align  # the hub data's is_safe pool
        samples = min(align.num_harmful or pool, pool) + (align.num_benign or 0)
        steps = align.epochs * -(-samples // (align.batch_size * align.grad_accum))
        assert steps == OFFICIAL_ALIGN_STEPS[defense], (defense, steps)
