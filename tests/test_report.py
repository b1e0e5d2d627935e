"""The HTML report: figures with their numbers, and rendering in a real headless browser."""

import base64
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from seqmem.analysis import registry
from seqmem.analysis.registry import analysis, figure
from seqmem.report import Entry, load_entries, summary_table, write_report
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
                         "longest_rel": rel, "shortest_tau_unit": 1, "shortest_tau": 1.0,
                         "shortest_rel": 0.9},
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


def test_report_has_every_figure_and_its_numbers(tmp_path):
    path = write_report(_entries(), tmp_path)
    page = path.read_text()
    for name in ("tau_vs_N", "epochs_per_N", "forgetting", "ablation", "perturbation"):
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png.startswith(PNG)
        assert base64.b64encode(png).decode()[:200] in page  # embedded, not linked
    assert page.count("<img class='figure'") == 5
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
    assert png.startswith(PNG) and base64.b64encode(png).decode()[:200] in page
    assert page.count("<img class='figure'") == 6 and "0.8125" in page
    assert path == tmp_path / "report.html"


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
    assert table["ablate longest-tau unit (rel. acc)"] == ["0.437", "0.991"]
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
    path = write_report(_entries(), tmp_path)
    dom, errors = _render(path)
    assert errors == []
    total = re.search(r'data-figures-total="(\d+)"', dom)
    loaded = re.search(r'data-figures-loaded="(\d+)"', dom)
    assert total and loaded, dom[:500]
    assert int(total.group(1)) == 5 and int(loaded.group(1)) == 5
    assert dom.count("<table>") >= 6
    # the check can fail: a broken image and a script error are both caught
    bad = tmp_path / "bad.html"
    bad.write_text(path.read_text().replace("data:image/png;base64,", "data:image/png;base64,AA",
                                            1).replace("</body>", "<script>nope();</script>"
                                                                  "</body>"))
    dom, errors = _render(bad)
    assert errors
    assert re.search(r'data-figures-loaded="(\d+)"', dom).group(1) == "4"
