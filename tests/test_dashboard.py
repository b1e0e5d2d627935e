"""The sweep dashboard: figures with their numbers, the Zoology best-per-state-size rule, and
rendering in a headless browser."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import pytest

from seqmem.dashboard import (
    fig_length,
    fig_speed,
    fig_state_size,
    fig_timescales,
    sweep_dashboard,
    write_dashboard,
)
from seqmem.errors import SeqmemError
from seqmem.report.render import figure_checks
from seqmem.store import RunStore
from test_report import _chromium, _render


def _rows():
    rows = []
    i = 0
    for mixer, size in (("gru", 64), ("gru", 128), ("attention", 4096)):
        for lr, acc in ((1e-3, 0.5), (3e-3, 0.9 if size > 64 else 0.7)):
            i += 1
            rows.append({"id": f"r{i}", "status": "done", "summary": {
                "mixer": mixer, "acc_mean": acc + (0.05 if mixer == "attention" else 0),
                "state_size": size, "epochs": 3, "tau_mean": 2.0, "tau_max": 9.5,
                "train_tokens_per_s": 1000.0 * i,
                "acc_by_length": {"64": acc, "128": acc / 2},
                "point": {"model.mixer.kind": mixer, "train.lr": lr}}})
    return rows


FIGURES = ("accuracy_vs_state_size", "accuracy_vs_length", "timescales", "speed")


def _elman(rows):
    """`rows` and two elman runs: same state size as a gru run, no timescales (an Elman unit
    has no leak or gate), the same accuracies by length as gru's best."""
    return rows + [{"id": f"e{i}", "status": "done", "summary": {
        "mixer": "elman", "acc_mean": 0.9, "state_size": 128, "epochs": 3,
        "train_tokens_per_s": 500.0, "acc_by_length": {"64": 0.9, "128": 0.45},
        "point": {"model.mixer.kind": "elman", "train.lr": 1e-3}}} for i in (1, 2)]


def test_best_accuracy_per_mixer_and_state_size():
    fig, header, table, caption = fig_state_size(_rows())
    assert header[0] == "mixer"
    assert table == [["attention", 4096, "0.950"], ["gru", 64, "0.700"], ["gru", 128, "0.900"]]
    assert "runs per mixer: attention 2, gru 4" in caption
    plt.close(fig)


def test_points_of_equal_x_stay_apart_and_axes_are_log_only_past_a_decade():
    fig, _, table, _ = fig_state_size(_elman(_rows()))
    ax = fig.axes[0]
    assert ["elman", 128, "0.900"] in table and ["gru", 128, "0.900"] in table
    pts = {ln.get_label(): list(zip(ln.get_xdata(), ln.get_ydata(), strict=True))
           for ln in ax.get_lines()}
    (ex, ey), = pts["elman"]
    gx, gy = pts["gru"][1]
    assert ey == gy == 0.9 and ex != gx  # shifted apart, not drawn on top of each other
    assert ax.get_xscale() == "log"  # 64 .. 4096: more than a decade
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels and all(re.fullmatch(r"[\d,.]+", t) for t in labels), labels  # 64, not 10^2
    assert figure_checks(fig) == {"legend_overlaps": 0, "empty_panels": 0}
    plt.close(fig)
    fig, *_ = fig_state_size([r for r in _elman(_rows()) if r["summary"]["mixer"] != "attention"])
    assert fig.axes[0].get_xscale() == "linear"  # 64 .. 128
    assert [t for t in fig.axes[0].get_xticks()] == [64, 128]
    plt.close(fig)
    fig, *_ = fig_length(_elman(_rows()))
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear" and list(ax.get_xticks()) == [64, 128]
    xs = {ln.get_label(): tuple(ln.get_xdata()) for ln in ax.get_lines()}
    assert len(set(xs.values())) == 3  # elman, gru and attention side by side
    plt.close(fig)


def test_timescales_name_every_mixer_and_speed_is_a_figure():
    fig, _header, table, caption = fig_timescales(_elman(_rows()))
    assert [r[0] for r in table] == ["attention", "elman", "gru"]
    assert table[1] == ["elman", 2, "none", "none"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["attention", "elman", "gru"]
    assert "elman declare no per-unit timescale" in caption
    assert fig.axes[0].get_yscale() == "linear"  # 2.0 .. 9.5: less than a decade
    plt.close(fig)
    fig, _header, table, caption = fig_speed(_elman(_rows()))
    assert table == [["attention", 2, "5,500"], ["elman", 2, "500"], ["gru", 4, "2,500"]]
    bars = [p.get_width() for p in fig.axes[0].patches]
    assert bars == [5500.0, 500.0, 2500.0]
    assert figure_checks(fig)["empty_panels"] == 0
    assert "tokens per second" in caption
    plt.close(fig)
    assert fig_speed([{"id": "x", "status": "done", "summary": {}}]) is None


def test_dashboard_page_has_figures_numbers_and_runs(tmp_path):
    path = write_dashboard(_rows(), tmp_path, title="t", bench=None)
    page = path.read_text()
    for name in FIGURES:
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        assert f"<figure data-name='{name}'" in page
    assert page.count("<svg class='figure'") == 4 and page.count("<figcaption>") == 4
    assert "0.950" in page and "r6" in page and "train.lr" in page
    assert "http://" not in page and "https://" not in page


def test_sweep_dashboard_of_a_stored_sweep(tmp_path):
    store = RunStore(tmp_path)
    for r in _rows():
        run = store.create_run({"model": {"mixer": {"kind": r["summary"]["mixer"]}}},
                               kind="sweep", name="zoo")
        store.update_summary(run.id, r["summary"])
        store.set_status(run.id, "done")
    store.create_run({}, kind="train", name="zoo")  # not a sweep's run
    path = sweep_dashboard(store, "zoo")
    assert path == tmp_path / "dashboard-zoo" / "dashboard.html"
    page = path.read_text()
    assert "<title>seqmem sweep zoo</title>" in page and "6 runs, 6 done." in page
    assert "0.950" in page
    with pytest.raises(SeqmemError, match=r"no sweep named 'nope' .*; sweeps there: zoo"):
        sweep_dashboard(store, "nope")


@pytest.mark.skipif(_chromium() is None, reason="no Chromium here: install Debian's chromium")
def test_dashboard_renders_in_a_headless_browser(tmp_path):
    path = write_dashboard(_elman(_rows()), tmp_path, title="t")
    dom, errors = _render(path)
    assert errors == []
    assert re.search(r'data-figures-loaded="(\d+)"', dom).group(1) == "4"
    assert re.search(r'data-figures-total="(\d+)"', dom).group(1) == "4"
    assert dom.count("<table>") >= 5
    for f in re.findall(r"<figure (.*?)</figure>", dom, re.S):
        assert 'data-legend-overlaps="0"' in f and 'data-empty-panels="0"' in f
        assert 'data-browser-overlaps="0"' in f
        assert len(re.search(r"<figcaption>(.*?)</figcaption>", f, re.S).group(1)) > 20


def test_a_figure_no_run_measured_says_what_would_fill_it(tmp_path):
    rows = _rows()
    for r in rows:
        del r["summary"]["acc_by_length"]
    page = write_dashboard(rows, tmp_path, title="t").read_text()
    assert "<figure data-name='accuracy_vs_length'" not in page
    assert "no run of this sweep measured it: add eval.lengths" in page
    assert page.count("<figcaption>") == 3
