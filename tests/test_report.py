"""The HTML report: figures with their numbers, and rendering in a real headless browser."""

import html
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from seqmem.analysis import registry
from seqmem.analysis.registry import analysis, figure
from seqmem.report import Entry, load_entries, summary_table, write_report
from seqmem.report.page import (
    chance_of,
    continual_figure,
    dimensionality_figure,
    epochs_figure,
    reach_figure,
)
from seqmem.report.render import CANVAS, DPI, figure_checks
from seqmem.store import RunStore

PNG = b"\x89PNG\r\n\x1a\n"


def _entries():
    def stages(taus):
        return [{"N": n, "tau": {"mean": t, "sd": 0.1, "max": t + 0.5, "min": 1.0},
                 "tau_net_mean": 2.0 + n / 10} for n, t in zip(range(2, 2 + len(taus)), taus,
                                                               strict=True)]

    def analysis(taus, rel):
        n = len(taus)
        return {
            "N": list(range(2, 2 + n)), "stages": stages(taus),
            "ablation": {"N": 1 + n, "longest_tau_unit": 0, "longest_tau": 1.9,
                         "longest_rel": rel, "longest_rel_sd": 0.01, "shortest_tau_unit": 1,
                         "shortest_tau": 1.0, "shortest_rel": 0.9, "shortest_rel_sd": 0.02},
            "perturbation": {"tau": [{"eps": e, "rel_mean": 1 - e * rel, "rel_sd": 0.01}
                                     for e in (0.0, 0.1, 0.5)]},
            "forgetting": {"N": list(range(2, 2 + n)),
                           "R": [[1.0 if j <= i else None for j in range(n)] for i in range(n)]},
        }

    return [
        Entry("single", "run-a", {"curriculum": "single", "n_solved": 4, "epochs": 9,
                                  "epochs_per_N": {"2": 2, "3": 3, "4": 4}, "tau_mean": 1.45},
              analysis([1.48, 1.47, 1.46], 0.437)),
        Entry("multi", "run-b", {"curriculum": "multi", "n_solved": 5, "epochs": 8,
                                 "epochs_per_N": {"2": 2, "3": 2, "4": 2, "5": 2},
                                 "tau_mean": 1.31}, analysis([1.48, 1.40, 1.35, 1.31], 0.991)),
    ]


FIGURES = ("tau_vs_N", "ablation", "perturbation", "forgetting", "epochs_per_N")


def _dpi(png: bytes) -> float:
    """The resolution a PNG declares (its pHYs chunk, pixels per metre), in dots per inch."""
    i = png.index(b"pHYs")
    x_ppm, y_ppm, unit = struct.unpack(">IIB", png[i + 4:i + 13])
    assert unit == 1 and x_ppm == y_ppm
    return x_ppm * 0.0254


def _sections(page: str) -> dict[str, str]:
    """name -> the <figure> element of each figure on the page."""
    return dict(re.findall(r"<figure data-name='([^']+)'(.*?)</figure>", page, re.S))


def test_report_has_every_figure_and_its_numbers(tmp_path):
    path = write_report(_entries(), tmp_path)
    page = path.read_text()
    sections = _sections(page)
    assert set(FIGURES) <= set(sections)
    for name in FIGURES:
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png.startswith(PNG) and round(_dpi(png)) == DPI >= 150  # print resolution
        assert "<svg class='figure'" in sections[name]  # vector, inline: not linked
        assert "<path" in sections[name]
        assert "<img" not in page  # heat maps are images inside their SVG, nothing else
    assert page.count("<svg class='figure'") == len(sections)
    assert "0.437" in page and "0.991" in page  # ablation numbers beside the figure
    assert "http://" not in page and "https://" not in page  # self-contained


def test_report_to_a_named_html_file(tmp_path):
    path = write_report(_entries(), tmp_path / "out" / "my.html")
    assert path == tmp_path / "out" / "my.html" and path.exists()
    assert (tmp_path / "out" / "ablation.png").exists()


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registries as they are, restored after the test (its registrations dropped)."""
    monkeypatch.setattr(registry, "ANALYSIS_REGISTRY", dict(registry.ANALYSIS_REGISTRY))
    monkeypatch.setattr(registry, "FIGURE_REGISTRY", dict(registry.FIGURE_REGISTRY))


def test_a_registered_figure_draws_the_entries_that_have_its_key(tmp_path, scratch_registry):
    drawn = []

    @figure("spectral_radius", analysis="radius")
    def radius_figure(entries, canvas):
        drawn.extend(e.run_id for e in entries)
        fig, ax = canvas.subplots(figsize=(3, 2))
        ax.bar(range(len(entries)), [e.analysis["radius"] for e in entries])
        return fig, ["run", "radius"], [[e.label, e.analysis["radius"]] for e in entries]

    entries = _entries()
    path = write_report(entries, tmp_path)
    assert drawn == [] and not (tmp_path / "spectral_radius.png").exists()
    entries[1].analysis["radius"] = 0.8125
    page = write_report(entries, tmp_path).read_text()
    assert drawn == ["run-b"]
    png = (tmp_path / "spectral_radius.png").read_bytes()
    assert png.startswith(PNG) and "spectral_radius" in _sections(page)
    assert "0.8125" in page
    assert path == tmp_path / "report.html"
    # no caption of its own: its title and the runs it shows
    caption = re.search(r"<figure data-name='spectral_radius'.*?<figcaption>(.*?)</figcaption>",
                        page, re.S).group(1)
    assert caption == "Spectral radius, for 1 run (multi)."


def test_a_figure_returns_or_declares_its_caption(tmp_path, scratch_registry):
    def draw(entries, canvas):
        fig, ax = canvas.subplots(figsize=(3, 2))
        ax.plot([0, 1], [0, 1])
        ax.set_title("a line")
        return fig, ["run"], [[e.label] for e in entries]

    @figure("returned", analysis="stages")
    def returned(entries, canvas):
        return (*draw(entries, canvas), f"Returned: {len(entries)} runs, 3 trials each.")

    @figure("declared", analysis="stages")
    def declared(entries, canvas):
        return draw(entries, canvas)

    declared.caption = lambda entries: f"Declared for {entries[0].label}."

    @figure("by_default", analysis="stages")
    def by_default(entries, canvas):
        return draw(entries, canvas)

    page = write_report(_entries(), tmp_path).read_text()
    caps = dict(re.findall(r"<figure data-name='([^']+)'.*?<figcaption>(.*?)</figcaption>",
                           page, re.S))
    assert caps["returned"] == "Returned: 2 runs, 3 trials each."
    assert caps["declared"] == "Declared for single."
    assert caps["by_default"] == "A line, for 2 runs (single, multi)."
    assert all(c.strip() for c in caps.values()) and set(FIGURES) <= set(caps)


def _curriculum_entries():
    """Two runs with stages: one finished its curriculum, one stopped while on N = 4."""
    return [
        Entry("single", "run-a", {
            "curriculum": "single", "n_solved": 3, "n_current": 4, "finished": False,
            "epochs": 9, "elapsed_s": 30.0, "epochs_per_N": {"2": 2, "3": 3, "4": 4},
            "stages": [{"N": 2, "epoch": 2, "elapsed_s": 5.0},
                       {"N": 3, "epoch": 5, "elapsed_s": 14.0}]},
              {"stages": [{"N": 2, "dimensionality": 3}, {"N": 3, "dimensionality": 5}]}),
        Entry("multi", "run-b", {
            "curriculum": "multi", "n_solved": 4, "n_current": 5, "finished": True,
            "epochs": 6, "elapsed_s": 20.0, "epochs_per_N": {"2": 2, "3": 2, "4": 2},
            "stages": [{"N": 2, "epoch": 2, "elapsed_s": 6.0},
                       {"N": 3, "epoch": 4, "elapsed_s": 12.0},
                       {"N": 4, "epoch": 6, "elapsed_s": 20.0}]},
              {"stages": [{"N": 2, "dimensionality": 2}, {"N": 4, "dimensionality": 7}]}),
    ]


def test_epochs_figure_draws_the_unsolved_stage_hollow_and_hatched():
    fig, _header, rows, caption = epochs_figure(_curriculum_entries(), CANVAS)
    assert rows == [["single", 2, 2, "yes"], ["single", 3, 3, "yes"], ["single", 4, 4, "no"],
                    ["multi", 2, 2, "yes"], ["multi", 3, 2, "yes"], ["multi", 4, 2, "yes"]]
    ax = fig.axes[0]
    bars = [p for p in ax.patches if p.get_height() > 0]
    hatched = [p for p in bars if p.get_hatch()]
    assert len(bars) == 6 and len(hatched) == 1
    assert hatched[0].get_height() == 4 and hatched[0].get_facecolor()[3] == 0  # hollow
    assert "not solved (run stopped)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert all(float(t).is_integer() for t in ax.get_xticks())
    assert all(float(t).is_integer() for t in ax.get_yticks())
    assert figure_checks(fig) == {"legend_overlaps": 0, "empty_panels": 0}
    assert "2 runs" in caption
    plt.close(fig)


def test_N_reached_over_time_and_epochs_one_line_per_curriculum():
    fig, _header, rows, _caption = reach_figure(_curriculum_entries(), CANVAS)
    assert rows[:2] == [["single", 2, 2, 5.0], ["single", 3, 5, 14.0]] and len(rows) == 5
    t_ax, ep_ax = fig.axes
    assert [ln.get_label() for ln in ep_ax.get_lines() if not ln.get_label().startswith("_")
            ] == ["single", "multi"]
    single_t, single_ep = t_ax.get_lines()[0], ep_ax.get_lines()[0]
    # from the start (N - 1 reached) through each solved stage to the run's end
    assert list(single_t.get_xdata()) == [0.0, 5.0, 14.0, 30.0]
    assert list(single_ep.get_xdata()) == [0, 2, 5, 9]
    assert list(single_ep.get_ydata()) == [1, 2, 3, 3]
    assert all(float(t).is_integer() for t in ep_ax.get_xticks())
    assert all(float(t).is_integer() for t in ep_ax.get_yticks())
    assert figure_checks(fig)["legend_overlaps"] == 0
    plt.close(fig)


def test_dimensionality_per_N_from_the_stage_rows():
    fig, _header, rows, _caption = dimensionality_figure(_curriculum_entries(), CANVAS)
    assert rows == [["single", 2, 3], ["single", 3, 5], ["multi", 2, 2], ["multi", 4, 7]]
    assert [list(ln.get_ydata()) for ln in fig.axes[0].get_lines()] == [[3, 5], [2, 7]]
    plt.close(fig)
    assert dimensionality_figure(_entries(), CANVAS) is None  # no stage measured it
    # one N and one value: still integer ticks only, and the second run's equal point shows
    one = [Entry(lab, lab, {"curriculum": lab}, {"stages": [{"N": 2, "dimensionality": 2}]})
           for lab in ("single", "multi")]
    fig, *_ = dimensionality_figure(one, CANVAS)
    ax = fig.axes[0]
    fig.canvas.draw()
    for ticks in (ax.get_xticks(), ax.get_yticks()):
        assert all(float(t).is_integer() for t in ticks), ticks
    first, second = ax.get_lines()
    assert second.get_markerfacecolor() == "none" and second.get_markersize() < \
        first.get_markersize()
    plt.close(fig)
    page = write_report(_curriculum_entries(), tempfile.mkdtemp()).read_text()
    assert {"dimensionality", "N_reached", "epochs_per_N"} <= set(_sections(page))


def _continual(n: int, **extra) -> Entry:
    g = np.random.default_rng(n)
    R = np.round(g.uniform(0.3, 1.0, (n, n)), 3).tolist()
    return Entry("finetune", f"c{n}", {"method": "finetune", "R": R,
                                        "experiences": [f"N={k}" for k in range(2, 2 + n)],
                                        **extra})


def test_continual_heat_map_readable_centred_on_chance_and_labelled_by_experience():
    fig, header, _rows, caption = continual_figure([_continual(3)], CANVAS)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["N=2", "N=3", "N=4"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["N=2", "N=3", "N=4"]
    assert header == ["run", "after", "on N=2", "on N=3", "on N=4"]
    im = ax.images[0]
    assert im.norm.vcenter == 0.5 and im.norm.vmax == 1.0
    assert im.get_cmap().name == "RdBu"
    # a number fits its cell: the cell is at least 2.5 times the font size, both in points
    fig.canvas.draw()
    box = ax.get_window_extent()
    cell_pt = box.width / 3 * 72 / fig.dpi
    sizes = {t.get_fontsize() for t in ax.texts}
    assert len(ax.texts) == 9 and min(sizes) >= 7 and cell_pt >= 2.5 * max(sizes)
    assert "0.5" in caption and "1 run" in caption
    plt.close(fig)
    # the chance level: the summary's, else 1 / n_classes, else two classes
    assert chance_of({"chance": 0.1}) == 0.1 and chance_of({"n_classes": 4}) == 0.25
    assert chance_of({}) == 0.5
    fig, *_ = continual_figure([_continual(3, n_classes=10)], CANVAS)
    assert fig.axes[0].images[0].norm.vcenter == pytest.approx(0.1)
    plt.close(fig)
    # more experiences: a larger map, cells as large; past 12 no numbers are crowded in
    small, *_ = continual_figure([_continual(3)], CANVAS)
    large, *_ = continual_figure([_continual(10)], CANVAS)
    assert large.get_figwidth() > small.get_figwidth()
    assert len(large.axes[0].texts) == 100
    many, *_ = continual_figure([_continual(16)], CANVAS)
    assert len(many.axes[0].texts) == 0
    for f in (small, large, many):
        plt.close(f)


def test_figure_checks_catch_a_legend_over_data_and_an_empty_panel():
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 12), np.linspace(0, 1, 12))).reshape(2, -1)
    fig, axes = plt.subplots(1, 2, figsize=(4, 2))
    axes[0].plot(*grid, "o", label="everywhere")
    axes[0].legend(loc="upper left")
    checks = figure_checks(fig)
    assert checks["empty_panels"] == 1 and checks["legend_overlaps"] > 0
    plt.close(fig)
    fig, ax = CANVAS.subplots(figsize=(4, 2))
    ax.plot(*grid, "o", label="everywhere")
    CANVAS.legend(ax)
    assert figure_checks(fig) == {"legend_overlaps": 0, "empty_panels": 0}
    plt.close(fig)


def test_summary_table_shows_every_analysis_headline(scratch_registry):
    @analysis("radius", needs="last_stage", writes=("radius",),
              headline={"radius": "spectral radius (last N)"})
    def radius(ctx):
        return {"radius": 0.0}

    entries = _entries()
    entries[1].analysis["radius"] = 0.8125
    entries[0].summary["perturb_tau_0.1_rel"] = 0.5  # recorded, analysis gives the number
    header, rows = summary_table(entries)
    assert header == ["measure", "single", "multi"]
    table = {r[0]: r[1:] for r in rows}
    assert table["spectral radius (last N)"] == ["", "0.812"]
    # a mean and its sd share one row
    assert table["ablate longest-tau unit (rel. acc.): mean ± sd over tie draws"] == \
        ["0.437 ± 0.010", "0.991 ± 0.010"]
    assert not [label for label in table if label.startswith("sd over")]
    assert table["perturb tau, eps 0.1 (rel. acc)"] == [f"{1 - 0.1 * 0.437:.3f}",
                                                       f"{1 - 0.1 * 0.991:.3f}"]
    assert table["tau_net mean (last N)"] == ["2.400", "2.500"]
    assert "perturb W, eps 0.1 (rel. acc)" not in table  # no run measured it


def test_load_entries_reads_summaries_and_analyses_of_stored_runs(tmp_path):
    store = RunStore(tmp_path)
    a = store.create_run({"seed": 0}, name="first")
    b = store.create_run({"seed": 1}, kind="continual", name="cl")
    store.update_summary(a.id, {"curriculum": "multi", "n_solved": 5, "ablate_longest_rel": 0.9})
    a.write_summary({"curriculum": "multi", "n_solved": 5})
    (a.dir / "analysis.json").write_text('{"N": [2, 3], "curriculum": "multi"}')
    store.update_summary(b.id, {"avg_acc": 0.7})
    b.write_summary({"avg_acc": 0.7, "R": [[1.0]]})
    ea, eb = load_entries(store, [a.id, b.id[:-1]])
    assert (ea.label, ea.run_id, ea.analysis) == ("multi", a.id, {"N": [2, 3],
                                                                  "curriculum": "multi"})
    assert ea.summary == {"curriculum": "multi", "n_solved": 5, "ablate_longest_rel": 0.9}
    assert (eb.label, eb.run_id, eb.analysis) == ("cl", b.id, {})
    assert eb.summary == {"avg_acc": 0.7, "R": [[1.0]]}


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _render(path: Path):
    """Load a page in headless Chromium; return (DOM after load, console error lines)."""
    with tempfile.TemporaryDirectory() as profile:
        p = subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr",
             "--v=0", "--virtual-time-budget=5000", "--dump-dom", path.as_uri()],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "HOME": profile},
        )
    errors = [line for line in p.stderr.splitlines()
              if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]
    return p.stdout, errors


@pytest.mark.skipif(_chromium() is None, reason="no Chromium here: install Debian's chromium "
                    "(the CI script does) to run the browser test")
def test_report_renders_in_a_headless_browser(tmp_path):
    entries = [*_entries(), *_curriculum_entries(), _continual(4)]
    path = write_report(entries, tmp_path)
    n = len(_sections(path.read_text()))
    dom, errors = _render(path)
    assert errors == []
    total = re.search(r'data-figures-total="(\d+)"', dom)
    loaded = re.search(r'data-figures-loaded="(\d+)"', dom)
    assert total and loaded, dom[:500]
    assert int(total.group(1)) == n >= 8 and int(loaded.group(1)) == n  # none empty
    assert dom.count("<table>") >= n + 1
    figures = re.findall(r"<figure (.*?)</figure>", dom, re.S)
    assert len(figures) == n
    for f in figures:
        name = re.search(r'data-name="([^"]+)"', f).group(1)
        assert re.search(r'data-legend-overlaps="0"', f), name  # measured in matplotlib
        assert re.search(r'data-empty-panels="0"', f), name
        assert re.search(r'data-browser-overlaps="0"', f), name  # measured in the page
        caption = html.unescape(re.search(r"<figcaption>(.*?)</figcaption>", f, re.S).group(1))
        assert len(caption) > 20 and "run" in caption, name
    # the checks can fail: an empty figure, a legend over markers and a script error
    page = path.read_text()
    bad = tmp_path / "bad.html"
    first = page.index("<svg class='figure'")
    end = page.index("</svg>", first) + len("</svg>")
    page = page[:first] + "<svg class='figure' width='10' height='10'></svg>" + page[end:]
    second = page.index(">", page.index("<svg class='figure'", first + 60)) + 1
    page = (page[:second] + "<g id='legend_9'><rect width='5000' height='5000' fill='none'/>"
            "</g>" + page[second:])  # a legend over the whole of the second figure
    bad.write_text(page.replace("</body>", "<script>nope();</script></body>"))
    dom, errors = _render(bad)
    assert errors
    assert re.search(r'data-figures-loaded="(\d+)"', dom).group(1) == str(n - 1)
    assert re.search(r'data-browser-overlaps="[1-9]', dom)


def test_paired_rows_join_a_mean_and_its_sd():
    from seqmem.report.page import paired_rows

    rows = paired_rows([("a", "x"), ("sd of a", "x_sd"), ("b", "y_mean"), ("spread", "y_sd"),
                        ("lonely", "z_sd"), ("c", "w")])
    assert rows == [("a: mean ± sd of a", "x", "x_sd"), ("b: mean ± spread", "y_mean", "y_sd"),
                    ("lonely", "z_sd", None), ("c", "w", None)]
