"""The HTML report: figures with their numbers, and rendering in a real headless browser."""

import base64
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from seqmem.report import Entry, write_report

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
