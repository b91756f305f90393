"""The report's worst-case section (sbr_bench/reporting/worst_case.py) on job folders written by hand."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import yaml

from sbr_bench.cli.report import main as report_main
from sbr_bench.reporting.collect import collect
from sbr_bench.reporting.worst_case import worst_case_csv, worst_case_markdown, worst_cases


def job(folder: Path, overrides: list[str], defense: str, hs=None, fa=None, floor=None, status="ok", search=True):
    """A job folder as a search leaves it; ``hs`` None: no metrics.json (a job that did not finish)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"search": {"utility_floor": 0.9, "reference_fa": None}} if search else {}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    choices = {"hydra": {"runtime": {"choices": {"defense": defense, "defense@stack": None}}}}
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(choices))
    if hs is not None:
        metrics = {"align/harmful_score": 1.0, "eval/harmful_score": hs, "eval/finetune_acc": fa}
        metrics["eval/over_refusal"] = 0.0
        if search:
            feasible = fa >= floor
            metrics |= {"search/floor": floor, "search/feasible": float(feasible), "search/reference_fa": floor / 0.9}
            metrics["search/objective"] = hs if feasible else fa - floor
        (folder / "metrics.json").write_text(json.dumps(metrics))
    state = {"status": status} if status == "ok" else {"status": "error", "error": "CUDA out of memory"}
    (folder / "status.json").write_text(json.dumps(state))


def undefended_search(root: Path) -> Path:
    """Job 0 the default attack; job 1 the highest HS but below the floor; jobs 2 and 3 tie; job 4 failed."""
    sweep = root / "none"
    floor = 72.0  # 0.9 x job 0's FA 80
    job(sweep / "0", ["attack=hft", "attack.lr=0.001", "defense=none"], "none", hs=50.0, fa=80.0, floor=floor)
    job(sweep / "1", ["attack=hft", "attack.lr=0.01", "defense=none"], "none", hs=90.0, fa=60.0, floor=floor)
    job(sweep / "2", ["attack=backdoor", "attack.lr=0.003", "defense=none"], "none", hs=70.0, fa=75.0, floor=floor)
    job(sweep / "3", ["attack=hft", "++adapter.r=64", "defense=none"], "none", hs=70.0, fa=79.0, floor=floor)
    job(sweep / "4", ["attack=hft", "adapter=full", "defense=none"], "none", status="error")
    return sweep


def test_the_floor_ties_and_failed_trials(tmp_path):
    (row,) = worst_cases(collect([undefended_search(tmp_path)]))
    assert row.defense == "none" and row.floor == 72.0
    # Job 1 has the highest HS (90) but lost 20 FA points: an attacker who needs a useful model cannot use it.
    assert [j.name for j in row.feasible] == ["0", "2", "3"]
    assert row.worst_hs == 70.0 and row.worst.name == "2" and row.ties == 1  # the first in job order, one tie
    assert row.median_hs == 70.0  # median of 50, 70, 70
    assert row.default.name == "0" and row.default.values["eval/harmful_score"] == 50.0
    assert [j.name for j in row.failed] == ["4"]
    assert (len(row.feasible), len(row.finished), len(row.jobs)) == (3, 4, 5)
    text = worst_case_markdown([row])
    assert row.max_hs_any_fa == 90.0  # job 1, below the floor
    attack = "attack=backdoor attack.lr=0.003 (job 2) (+1 tied)"
    row_line = f"| none | - | 70.0 | 75.0 | {attack} | 50.0 | 70.0 | 90.0 | 3 / 4 / 5 | 72.0 |"
    assert row_line in text
    assert "- none: job 4 (attack=hft adapter=full): error: CUDA out of memory" in text


def test_defense_settings_are_rows_and_every_trial_below_the_floor_gives_no_worst_case(tmp_path):
    sweep = tmp_path / "sbr"
    common = ["defense=sbr", "search.reference_fa=80"]
    job(sweep / "0", ["attack=hft", *common, "defense.lam=5"], "sbr", hs=20.0, fa=78.0, floor=72.0)
    job(sweep / "1", ["attack=backdoor", *common, "defense.lam=5"], "sbr", hs=40.0, fa=73.0, floor=72.0)
    job(sweep / "2", ["attack=hft", *common, "defense.lam=50"], "sbr", hs=60.0, fa=50.0, floor=72.0)
    rows = worst_cases(collect([sweep]))
    assert [(r.defense, r.setting) for r in rows] == [("sbr", ("defense.lam=5",)), ("sbr", ("defense.lam=50",))]
    assert rows[0].worst_hs == 40.0 and rows[0].worst.name == "1"
    assert rows[1].worst is None and rows[1].feasible == [] and rows[1].median_hs is None
    table = list(csv.DictReader(io.StringIO(worst_case_csv(rows))))
    assert table[0]["worst_hs"] == "40.0" and table[0]["worst_attack"] == "attack=backdoor"
    assert table[0]["default_hs"] == "20.0" and table[0]["trials_feasible"] == "2" and table[0]["fa_floor"] == "72.0"
    assert table[1]["worst_hs"] == "" and table[1]["trials_finished"] == "1" and table[1]["max_hs_any_fa"] == "60.0"


def test_an_ordinary_sweep_has_no_worst_case_section(tmp_path):
    job(tmp_path / "sweep" / "0", ["defense=none"], "none", hs=50.0, fa=80.0, search=False)
    assert worst_cases(collect([tmp_path / "sweep"])) == []
    assert report_main([str(tmp_path / "sweep")]) == 0
    assert "Worst case" not in (tmp_path / "sweep" / "report.md").read_text()
    assert not (tmp_path / "sweep" / "worst_case.csv").exists()


def test_the_report_of_two_searches_writes_the_section_the_csv_and_the_plot(tmp_path, capsys):
    undefended_search(tmp_path / "searches")
    sweep = tmp_path / "searches" / "sbr"
    job(sweep / "0", ["attack=hft", "defense=sbr", "search.reference_fa=80"], "sbr", hs=10.0, fa=79.0, floor=72.0)
    job(sweep / "1", ["attack=hft", "defense=sbr", "search.reference_fa=80"], "sbr", hs=30.0, fa=74.0, floor=72.0)
    out = tmp_path / "report"
    assert report_main([str(tmp_path / "searches" / "none"), str(sweep), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "## Worst case under the utility floor" in report and "![worst_case_vs_budget.png]" in report
    rows = list(csv.DictReader(io.StringIO((out / "worst_case.csv").read_text())))
    found = [(r["defense"], r["worst_hs"], r["worst_job"]) for r in rows]
    assert found == [("none", "70.0", "none/2"), ("sbr", "30.0", "sbr/1")]
    assert (out / "plots" / "worst_case_vs_budget.png").stat().st_size > 0
    assert "worst case under the utility floor" in capsys.readouterr().out


def test_each_worst_case_is_a_tagged_wandb_run_with_its_figures(tmp_path):
    from omegaconf import OmegaConf
    from wandb_offline import run_config, run_name, run_summary, run_tags

    from sbr_bench.wandb_run import log_worst_cases

    rows = worst_cases(collect([undefended_search(tmp_path)]))
    wandb = {"project": "sbr-bench", "entity": None, "group": "attacker_search_toy", "job_type": "hft"}
    log_worst_cases(OmegaConf.create({"wandb": {**wandb, "mode": "offline"}}), rows, tmp_path)
    (path,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    assert run_name(path) == "worst-case-none" and run_tags(path) == ["worst-case"]
    config = run_config(path)
    assert config["worst_attack"] == "attack=backdoor attack.lr=0.003" and config["worst_job"].endswith("none/2")
    summary = run_summary(path)
    assert summary["worst_case/harmful_score"] == 70.0 and summary["worst_case/default_harmful_score"] == 50.0
    assert (summary["worst_case/trials_feasible"], summary["worst_case/trials_run"]) == (3, 5)
    log_worst_cases(None, rows, tmp_path / "none")  # logger=none: nothing
    assert not (tmp_path / "none" / "wandb").exists()
