"""The report's plots for papers: a PDF beside every PNG, one colour per defense everywhere, no global backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib
from job_folders import sweep_of

from sbr_bench.reporting import plots
from sbr_bench.reporting.aggregate import group
from sbr_bench.reporting.collect import collect

GRID = [  # two poison ratios and two seeds for each defense: the poison-ratio and HS-vs-FA plots are drawn
    ([f"defense={d}", f"attack.poison_ratio={p}", f"seed={s}"], {"hs": (10.0, h + 10 * s), "fa": 80.0 + s})
    for d, h in (("none", 60.0), ("sbr", 20.0), ("vaccine", 40.0))
    for p in (0.1, 0.2)
    for s in (0, 1)
]


def drawn(tmp_path, grid, monkeypatch, judge=None):
    """(outcome, the figures drawn) of the plots of ``grid``; the figures are caught at their save."""
    figures = {}
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(path.name, fig) and save(fig, path))
    rows = group(collect([sweep_of(tmp_path / "sweep", grid)]))
    return plots.draw(rows, tmp_path / "plots", lambda line: None, judge), figures


def line_colours(fig) -> dict[str, str]:
    """Legend label -> colour of each drawn line (error bars and lines alike)."""
    ax = fig.axes[0]
    handles, labels = ax.get_legend_handles_labels()
    out = {}
    for handle, label in zip(handles, labels, strict=True):
        line = handle[0] if isinstance(handle, tuple) else handle
        line = getattr(line, "lines", [line])[0] if not hasattr(line, "get_color") else line
        out[label.split()[0]] = matplotlib.colors.to_hex(line.get_color())
    return out


def test_every_png_has_its_pdf(tmp_path, monkeypatch):
    outcome, _ = drawn(tmp_path, GRID, monkeypatch)
    written = [name for name, what in outcome.items() if what == "written"]
    assert {"hs_vs_poison_ratio.png", "hs_vs_fa.png"} <= set(written)
    for name in written:
        png = tmp_path / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"


def test_a_defense_keeps_its_colour_across_plots_and_reports(tmp_path, monkeypatch):
    _, all_three = drawn(tmp_path / "a", GRID, monkeypatch)
    _, without_none = drawn(tmp_path / "b", [g for g in GRID if "defense=none" not in g[0]], monkeypatch)
    poison = line_colours(all_three["hs_vs_poison_ratio.png"])
    assert poison == line_colours(all_three["hs_vs_fa.png"])
    assert line_colours(without_none["hs_vs_poison_ratio.png"]) == {k: poison[k] for k in ("sbr", "vaccine")}
    assert poison["none"] == plots.NONE_COLOUR and len(set(poison.values())) == 3
    assert plots.defense_colour("vaccine+sbr") == plots.defense_colour("vaccine+sbr") in plots.PALETTE


def test_drawing_leaves_the_backend_alone_and_never_imports_pyplot(tmp_path):
    code = (
        "import matplotlib, sys; matplotlib.use('svg');"
        "from job_folders import sweep_of; from sbr_bench.reporting import plots;"
        "from sbr_bench.reporting.aggregate import group; from sbr_bench.reporting.collect import collect;"
        f"from test_plots import GRID; from pathlib import Path; root = Path({str(tmp_path)!r});"
        "out = plots.draw(group(collect([sweep_of(root / 's', GRID)])), root / 'p', print);"
        "assert out['hs_vs_fa.png'] == 'written', out;"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "svg False"


def test_the_hs_axis_names_the_judge_the_report_was_asked_for(tmp_path, monkeypatch):
    _, own = drawn(tmp_path / "own", GRID, monkeypatch)
    _, rejudged = drawn(tmp_path / "rejudged", GRID, monkeypatch, judge="beaverdam")
    assert set(own) == set(rejudged) and own
    for name in own:
        assert own[name].axes[0].get_ylabel() == "HS after attack (%)"
        assert rejudged[name].axes[0].get_ylabel() == "HS after attack (%), judge beaverdam"
