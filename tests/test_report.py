"""The sweep report: seeds pooled with a Student's t CI, best cells, CSV, plots, failed jobs, the CLI.

Every test builds job folders by hand (``.hydra/{config,hydra,overrides}.yaml``, ``metrics.json``,
``status.json``) with known numbers; nothing trains. The expected numbers are worked out here.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest
import yaml
from job_folders import make_job, sweep_of
from omegaconf import OmegaConf

from sbr_bench.cli import report
from sbr_bench.reporting import plots
from sbr_bench.reporting.aggregate import group
from sbr_bench.reporting.callback import ReportCallback
from sbr_bench.reporting.collect import collect
from sbr_bench.reporting.stats import summarize, t_quantile
from sbr_bench.reporting.tables import settings_csv, settings_markdown
from sbr_bench.reporting.write import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# ---- statistics ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("df", "printed"),  # two-sided 95 % quantiles as printed in every t table (e.g. NIST e-Handbook 1.3.6.7.2)
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (10, 2.228), (30, 2.042), (100, 1.984)],
)
def test_t_quantile_matches_the_printed_table(df, printed):
    assert t_quantile(df) == pytest.approx(printed, abs=6e-4)


def test_two_seeds_ci_is_the_hand_computation():
    s = summarize([10.0, 20.0])
    # mean 15, s = sqrt(((-5)^2 + 5^2) / 1) = 7.0711, half-width 12.706 * 7.0711 / sqrt(2) = 63.53
    assert s.mean == 15.0 and s.n == 2 and s.total == 2
    assert s.ci95 == pytest.approx(63.53, abs=0.01)


def test_three_seeds_ci_is_the_hand_computation():
    s = summarize([12.0, 18.0, 30.0])
    # mean 20, s = sqrt((64 + 4 + 100) / 2) = sqrt(84) = 9.1652, half-width 4.303 * 9.1652 / sqrt(3) = 22.77
    assert s.mean == 20.0
    assert s.ci95 == pytest.approx(4.3027 * math.sqrt(84) / math.sqrt(3), rel=1e-4)
    assert s.ci95 == pytest.approx(22.77, abs=0.01)


def test_one_seed_has_no_interval_and_nan_or_missing_values_are_left_out_and_counted():
    one = summarize([42.0])
    assert (one.mean, one.ci95, one.n, one.total) == (42.0, None, 1, 1)
    partial = summarize([10.0, math.nan, None, 20.0])
    assert (partial.mean, partial.n, partial.total, partial.left_out) == (15.0, 2, 4, 2)
    assert partial.ci95 == pytest.approx(63.53, abs=0.01)
    empty = summarize([math.nan, None])
    assert (empty.mean, empty.ci95, empty.n, empty.total) == (None, None, 0, 2)


# ---- grouping, table, best marks, CSV ------------------------------------------------------------


def two_by_two(root: Path) -> Path:
    """defense=none,sbr x attack.poison_ratio=0.1,0.2 x seed=0,1,2 (attack.data_seed varies with the seed)."""
    hs_after = {  # (defense, p) -> HS after per seed
        ("none", "0.1"): [40.0, 50.0, 60.0],
        ("none", "0.2"): [70.0, 80.0, 90.0],
        ("sbr", "0.1"): [10.0, 20.0, 30.0],
        ("sbr", "0.2"): [12.0, 18.0, 30.0],
    }
    fa = {"none": [90.0, 92.0, 94.0], "sbr": [80.0, math.nan, 90.0]}
    grid = []
    for (defense, p), values in hs_after.items():
        for seed, hs in enumerate(values):
            overrides = [f"defense={defense}", f"attack.poison_ratio={p}", f"seed={seed}", f"attack.data_seed={seed}"]
            grid.append((overrides, {"hs": (5.0, hs), "fa": fa[defense][seed], "refusal": 10.0 + seed}))
    return sweep_of(root, grid)


def test_jobs_that_differ_only_in_seeds_form_one_setting(tmp_path):
    rows = group(collect([two_by_two(tmp_path)]))
    assert [(r.defense, r.key, r.n) for r in rows] == [
        ("none", ("attack.poison_ratio=0.1", "model=toy"), 3),
        ("none", ("attack.poison_ratio=0.2", "model=toy"), 3),
        ("sbr", ("attack.poison_ratio=0.1", "model=toy"), 3),
        ("sbr", ("attack.poison_ratio=0.2", "model=toy"), 3),
    ]
    assert [r.mean("eval/harmful_score") for r in rows] == [50.0, 80.0, 20.0, 20.0]
    assert rows[2].summaries["eval/harmful_score"].ci95 == pytest.approx(4.3027 * 10 / math.sqrt(3), rel=1e-4)
    # sbr's FA: one NaN of three -> mean of 80 and 90, n = 2 of 3
    fa = rows[2].summaries["eval/finetune_acc"]
    assert (fa.mean, fa.n, fa.total) == (85.0, 2, 3)
    assert rows[2].param("defense.lam") == 50.0  # from config.yaml: the override never named it


def test_best_cells_are_marked_in_the_right_rows(tmp_path):
    rows = group(collect([two_by_two(tmp_path)]))
    # HS after: sbr at both ratios ties at 20.0 (lowest); FA: none p=0.2 and p=0.1 tie at 92 (highest);
    # over-refusal: all 11.0 -> every row ties; HS before: never marked
    assert [sorted(r.best) for r in rows] == [
        ["eval/finetune_acc", "eval/over_refusal"],
        ["eval/finetune_acc", "eval/over_refusal"],
        ["eval/harmful_score", "eval/over_refusal"],
        ["eval/harmful_score", "eval/over_refusal"],
    ]
    table = settings_markdown(rows).splitlines()
    assert table[0] == "| defense | setting | n | HS before | HS after | FA | over-refusal |"
    assert (
        table[2] == "| none | attack.poison_ratio=0.1 | 3 | 5.0 ± 0.0 | 50.0 ± 24.8 | **92.0 ± 5.0** | **11.0 ± 2.5** |"
    )
    assert (
        table[4]
        == "| sbr | attack.poison_ratio=0.1 | 3 | 5.0 ± 0.0 | **20.0 ± 24.8** | 85.0 ± 63.5 (2 of 3) | **11.0 ± 2.5** |"
    )
    assert "- all settings: model=toy" in table
    assert any(line.startswith("- (k of n): only k") for line in table)


def test_csv_parsed_back_holds_the_numbers(tmp_path):
    rows = group(collect([two_by_two(tmp_path)]))
    parsed = list(csv.DictReader(io.StringIO(settings_csv(rows))))
    assert len(parsed) == 4
    sbr = parsed[2]
    assert (sbr["defense"], sbr["setting"], sbr["attack.poison_ratio"], sbr["n"]) == (
        "sbr",
        "attack.poison_ratio=0.1",
        "0.1",
        "3",
    )
    assert float(sbr["hs_after_mean"]) == 20.0
    assert float(sbr["hs_after_ci95"]) == pytest.approx(4.3027 * 10 / math.sqrt(3), rel=1e-4)
    assert (sbr["hs_after_n"], sbr["hs_after_best"], sbr["hs_before_best"]) == ("3", "1", "0")
    assert (float(sbr["fa_mean"]), sbr["fa_n"], sbr["fa_best"]) == (85.0, "2", "0")
    assert float(parsed[0]["fa_mean"]) == 92.0 and parsed[0]["fa_best"] == "1"


def test_a_value_missing_in_every_job_is_an_empty_cell(tmp_path):
    grid = [([f"defense={d}", f"seed={s}"], {"fa": math.nan}) for d in ("none", "sbr") for s in (0, 1)]
    rows = group(collect([sweep_of(tmp_path, grid)]))
    assert "| none | - | 2 | 80.0 ± 0.0 | **50.0 ± 0.0** | - | **10.0 ± 0.0** |" in settings_markdown(rows)
    parsed = list(csv.DictReader(io.StringIO(settings_csv(rows))))
    assert (parsed[0]["fa_mean"], parsed[0]["fa_ci95"], parsed[0]["fa_n"]) == ("", "", "0")


def test_a_stacked_defense_is_its_own_row(tmp_path):
    grid = [(["defense=vaccine", "defense@stack=sbr", f"seed={s}"], {}) for s in (0, 1)]
    grid += [(["defense=vaccine", f"seed={s}"], {}) for s in (0, 1)]
    rows = group(collect([sweep_of(tmp_path, grid)]))
    assert [(r.defense, r.n) for r in rows] == [("vaccine+sbr", 2), ("vaccine", 2)]


# ---- plots ---------------------------------------------------------------------------------------


def plotted_sweep(root: Path) -> Path:
    """none and sbr over p = 0.1, 0.2; sbr over lam = 5, 50 at p = 0.1; HS curves over 3 epochs; 2 seeds."""
    grid = []
    for seed in (0, 1):
        curve = {"epoch": [0, 1, 2], "step": [0, 4, 8], "harmful_score": [5.0, 30.0 + seed, 60.0 + seed]}
        for p in ("0.1", "0.2"):
            grid.append((["defense=none", f"attack.poison_ratio={p}", f"seed={seed}"], {"curves": curve}))
            grid.append((["defense=sbr", f"attack.poison_ratio={p}", f"seed={seed}"], {"hs": (5.0, 20.0 + seed)}))
        grid.append((["defense=sbr", "defense.lam=5", "attack.poison_ratio=0.1", f"seed={seed}"], {"hs": (5.0, 40.0)}))
    return sweep_of(root, grid)


def test_the_four_plots_are_valid_pngs_and_report_md_shows_them(tmp_path, capsys):
    sweep = plotted_sweep(tmp_path / "sweep")
    assert report.main([str(sweep)]) == 0
    for name in plots.PLOTS:
        data = (sweep / "plots" / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, name
        assert f"![{name}](plots/{name})" in (sweep / "report.md").read_text()
    err = capsys.readouterr().err
    assert "skipped" not in err and f"report written to {sweep}" in err


def test_the_lambda_series_holds_the_swept_lams_and_none_is_its_reference(tmp_path):
    rows = group(collect([plotted_sweep(tmp_path)]))
    lines = plots.series([r for r in rows if r.param("defense.lam") is not None], "defense.lam")
    # sbr at p=0.1 has lam 5 and 50 (the default, from config.yaml); at p=0.2 only lam 50
    assert {label: [(x, r.mean("eval/harmful_score")) for x, r in pts] for label, pts in lines.items()} == {
        "sbr attack.poison_ratio=0.1": [(5.0, 40.0), (50.0, 20.5)],
        "sbr attack.poison_ratio=0.2": [(50.0, 20.5)],
    }
    # the CSV gives every row its lam from config.yaml (empty where the defense has none)
    assert [r["defense.lam"] for r in csv.DictReader(io.StringIO(settings_csv(rows)))] == [
        "",
        "50.0",
        "",
        "50.0",
        "5.0",
    ]
    curve = plots.epoch_curve(rows[0])  # none, p=0.1: epochs 0..2 over both seeds
    assert [(e, m) for e, m, _ in curve] == [(0.0, 5.0), (1.0, 30.5), (2.0, 60.5)]
    assert curve[0][2] == 0.0 and curve[1][2] == pytest.approx(12.706 * math.sqrt(0.5) / math.sqrt(2), abs=1e-3)


def test_a_plot_whose_axis_does_not_vary_is_skipped_with_the_override_to_sweep(tmp_path, capsys):
    grid = [([f"defense={d}", f"seed={s}"], {}) for d in ("none", "sbr") for s in (0, 1)]
    sweep = sweep_of(tmp_path / "sweep", grid)
    assert report.main([str(sweep)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert (
        "sbr-bench-report: hs_vs_poison_ratio.png skipped: no defense was run at more than one attack.poison_ratio; "
        "sweep it, e.g. attack.poison_ratio=0.05,0.1,0.2"
    ) in err
    assert any("hs_vs_lambda.png skipped:" in line and "defense.lam=0,5,50" in line for line in err)
    assert any("hs_vs_epoch.png skipped:" in line and "eval.during_attack.every=1" in line for line in err)
    assert sorted(p.name for p in (sweep / "plots").iterdir()) == ["hs_vs_fa.pdf", "hs_vs_fa.png"]
    assert "- hs_vs_poison_ratio.png: skipped: no defense was run" in (sweep / "report.md").read_text()


def test_a_failing_plot_loses_neither_the_tables_nor_the_other_plots(tmp_path, monkeypatch):
    def broken(rows, path, judge=None):
        raise RuntimeError("font cache\nsecond line")

    monkeypatch.setitem(plots.PLOTS, "hs_vs_poison_ratio.png", broken)
    sweep = plotted_sweep(tmp_path)
    jobs = collect([sweep])
    said = []
    write_report(jobs, group(jobs), sweep, said.append)
    assert said == ["hs_vs_poison_ratio.png failed: RuntimeError: font cache"]
    assert (sweep / "report.csv").read_text().count("\n") == 1 + 5
    assert "- hs_vs_poison_ratio.png: failed: RuntimeError" in (sweep / "report.md").read_text()
    assert (sweep / "plots" / "hs_vs_fa.png").read_bytes()[:8] == PNG_MAGIC


# ---- failed jobs, the callback, the CLI ----------------------------------------------------------


def sweep_with_failures(root: Path) -> Path:
    make_job(root, 0, ["model=toy", "attack.lr=1e-3"])
    make_job(
        root,
        1,
        ["model=toy", "attack.lr=-1"],
        status={"status": "error", "error": "ValueError: bad lr", "traceback": "..."},
    )
    make_job(root, 2, ["model=toy", "attack.lr=2e-3"], status={"status": "interrupted", "error": "signal 15"})
    (root / "2" / "status.json").unlink()  # killed before status.json: "missing"
    return root


def test_report_md_shows_where_the_task_answers_went(tmp_path):
    answers = {"eval/task/named/negative": 20.0, "eval/task/named/positive": 75.0, "eval/task/wrong/other_label": 30.5}
    make_job(tmp_path, 0, ["model=toy", "defense=sbr"], fa=69.5, **answers)
    make_job(tmp_path, 1, ["model=toy", "defense=none"])  # an older job without the breakdown: left out
    assert report.main([str(tmp_path), "--format", "markdown"]) == 0
    text = (tmp_path / "report.md").read_text()
    section = text.split("## Task answers after the attack\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert section[0] == "| job | overrides | FA | named negative | named positive | wrong other_label |"
    assert section[2:] == ["| 0 | defense=sbr | 69.5 | 20 | 75 | 30.5 |"]  # shared overrides said once, above
    assert text.index("## Mean over seeds") < text.index("## Task answers") < text.index("## What ran")


def test_report_md_lists_the_jobs_that_did_not_finish_with_their_error(tmp_path):
    sweep = sweep_with_failures(tmp_path)
    assert report.main([str(sweep), "--format", "markdown"]) == 0
    text = (sweep / "report.md").read_text()
    assert "| 1 | attack.lr=-1 | - | - | - | - | error: ValueError: bad lr |" in text  # the per-job table, as before
    assert "2 of 3 jobs did not finish:" in text
    assert f"- job 1 ({sweep / '1'}): model=toy attack.lr=-1: error: ValueError: bad lr" in text
    assert f"- job 2 ({sweep / '2'}): model=toy attack.lr=2e-3: missing" in text
    assert text.index("## Jobs\n") < text.index("## Mean over seeds") < text.index("## Jobs that did not finish")


def test_the_multirun_callback_writes_the_files_and_exits_1_on_a_failed_job(tmp_path, capsys):
    sweep = sweep_with_failures(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        ReportCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert exit_info.value.code == 1
    assert (sweep / "report.md").is_file() and (sweep / "report.csv").is_file()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sbr-bench: error: 2 of 3 jobs did not finish (job 1, 2)")


def test_the_cli_prints_the_aggregated_table_after_the_jobs_and_writes_to_report_for_several_folders(
    tmp_path, monkeypatch, capsys
):
    first = two_by_two(tmp_path / "a")
    second = sweep_of(tmp_path / "b", [(["defense=none", "attack.poison_ratio=0.1", "seed=7"], {"hs": (5.0, 50.0)})])
    (second / "0" / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(["model=toy", "defense=none", "seeds=two", "attack.poison_ratio=0.1", "seed=7"])
    )  # a seeds preset names no setting either
    monkeypatch.chdir(tmp_path)
    assert report.main([str(first), str(second), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert out.index("| job | overrides |") < out.index("Mean over seeds") < out.index("| defense | setting | n |")
    # the job of the second folder joins the setting of the first folder's none, p=0.1 rows (seed differs only)
    assert "| none | attack.poison_ratio=0.1 | 4 | 5.0 ± 0.0 | 50.0 ± 13.0 |" in out
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "report.csv").is_file()
    # job numbers repeat across sweeps, so each job is named by its sweep folder too
    assert "| a/0 | " in out and "| b/0 | " in out


def test_plotted_intervals_stop_at_0_and_100_percent():
    from sbr_bench.reporting.plots import _bounded

    # 2 seeds at 10 and 20: 15 +- 63.5 would reach -48.5 and 78.5; 95 +- 10 would reach 105
    assert _bounded([15.0, 95.0, 50.0], [63.53, 10.0, 5.0]) == [[15.0, 10.0, 5.0], [63.53, 5.0, 5.0]]


def test_the_cli_says_one_line_and_exits_2_on_bad_input(tmp_path, capsys):
    assert report.main([str(tmp_path / "nothere")]) == 2
    assert capsys.readouterr().err == f"sbr-bench-report: error: not a folder: {tmp_path / 'nothere'}\n"
    (tmp_path / "file").write_text("x")
    sweep = sweep_of(tmp_path / "sweep", [(["seed=0"], {})])
    assert report.main([str(sweep), "--out", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == f"sbr-bench-report: error: --out {tmp_path / 'file'} is a file; give a folder\n"
