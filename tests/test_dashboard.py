"""The sweep dashboard: figures with their numbers, the Zoology best-per-state-size rule, and
rendering in a headless browser."""

from __future__ import annotations

import re

import pytest

from seqmem.dashboard import fig_state_size, sweep_dashboard, write_dashboard
from seqmem.errors import SeqmemError
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


def test_best_accuracy_per_mixer_and_state_size():
    _, header, table = fig_state_size(_rows())
    assert header[0] == "mixer"
    assert table == [["attention", 4096, "0.950"], ["gru", 64, "0.700"], ["gru", 128, "0.900"]]


def test_dashboard_page_has_figures_numbers_and_runs(tmp_path):
    path = write_dashboard(_rows(), tmp_path, title="t", bench=None)
    page = path.read_text()
    for name in ("accuracy_vs_state_size", "accuracy_vs_length", "timescales"):
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    assert page.count("<img class='figure'") == 3
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
    path = write_dashboard(_rows(), tmp_path, title="t")
    dom, errors = _render(path)
    assert errors == []
    assert re.search(r'data-figures-loaded="(\d+)"', dom).group(1) == "3"
    assert re.search(r'data-figures-total="(\d+)"', dom).group(1) == "3"
    assert dom.count("<table>") >= 5
