"""The reproduce framework: the registry, the experiment sweep runner, the page, the numbers."""

from __future__ import annotations

import math
import statistics

import matplotlib.pyplot as plt
import pytest

from seqmem.cli.main import main
from seqmem.errors import SeqmemError
from seqmem.reproduce import base
from seqmem.reproduce.base import (
    Outcome,
    fmt_mean_sd,
    get,
    mean_sd,
    reproduction,
    run_experiment_sweep,
    save_figure,
    write_page,
)
from seqmem.store import RunStore

TINY = """name: tiny
overrides: [task.kind=n_dms, task.N=2, curriculum.kind=none, model.d_model=8,
            train.batch_size=8, train.steps_per_epoch=2, train.eval_batches=1,
            train.max_epochs=1]
grid:
  model.mixer.kind: [elman]
seeds: [0, 1]
"""


@pytest.fixture
def registered():
    """A registration that is removed again after the test."""
    names = []

    def add(name, run):
        reproduction(name, title="t", paper="p", budget="b", directory="experiments/x")(run)
        names.append(name)

    yield add
    for n in names:
        base.REPRODUCTIONS.pop(n, None)


def test_registry_get_and_errors(registered):
    def run(store, *, quick, progress=None):
        return Outcome((["a"], [["1"]]), (["a"], [["2"]]), "reproduced", "same")

    registered("toy_finding", run)
    rep = get("toy_finding")
    assert rep.run is run and rep.directory == "experiments/x"
    with pytest.raises(SeqmemError, match="toy_finding"):
        get("no_such_finding")  # the message names the accepted names
    with pytest.raises(SeqmemError, match="registered twice"):
        registered("toy_finding", run)
    with pytest.raises(SeqmemError, match="reproduced, partly, not reproduced"):
        Outcome(([], []), ([], []), "sort of", "")


def test_mean_sd_matches_statistics():
    xs = [3.0, 5.0, 10.0, None, math.nan]
    m, sd, n = mean_sd(xs)
    assert n == 3
    assert m == pytest.approx(statistics.mean([3, 5, 10]))
    assert sd == pytest.approx(statistics.stdev([3, 5, 10]))
    assert mean_sd([]) == (pytest.approx(math.nan, nan_ok=True),) * 2 + (0,)
    assert fmt_mean_sd([1.0, 3.0]) == f"2 ± {statistics.stdev([1, 3]):.3g} (n=2)"


def test_run_experiment_sweep_and_page(tmp_path, registered):
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "sweep.quick.yaml").write_text(TINY)
    store = RunStore(tmp_path / "runs")
    with pytest.raises(SeqmemError, match=r"sweep\.yaml"):
        run_experiment_sweep(store, folder, quick=False)
    out = run_experiment_sweep(store, folder, quick=True, backend="inline", workers=1)
    assert sorted(s["point"]["seed"] for s in out.values()) == [0, 1]
    assert all(s["status"] == "done" for s in out.values())
    # a second call finds both runs done and runs nothing new
    again = run_experiment_sweep(store, folder, quick=True, backend="inline", workers=1)
    assert set(again) == set(out)

    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    png = save_figure(fig, store.root, "toy", "curve")
    assert png == store.root / "reproduce" / "toy" / "curve.png"
    outcome = Outcome((["seed", "acc"], [["0", "0.5"]]), (["acc"], [["0.9"]]), "partly",
                      "ours 0.5 against 0.9")
    page = write_page(store.root, "toy", "Toy <finding>", outcome, [png])
    text = page.read_text()
    assert page == store.root / "reproduce" / "toy" / "index.html"
    assert "Toy &lt;finding&gt;" in text and "ours 0.5 against 0.9" in text
    assert "data:image/png;base64," in text and "<td>0.9</td>" in text
    with pytest.raises(SeqmemError, match="not found"):
        write_page(store.root, "toy", "t", outcome, [tmp_path / "missing.png"])


def test_cli_list_and_run(tmp_path, registered, capsys):
    seen = {}

    def run(store, *, quick, progress=None):
        seen.update(root=store.root, quick=quick, workers=base.WORKERS.get())
        outcome = Outcome((["N", "ours"], [["3", "0.91"]]), (["N", "paper"], [["3", "0.95"]]),
                          "partly", "0.91 against 0.95")
        outcome.page = write_page(store.root, "toy_cli", "toy", outcome, [])
        return outcome

    registered("toy_cli", run)
    assert main(["reproduce", "--list"]) == 0
    assert "toy_cli" in capsys.readouterr().out
    root = tmp_path / "runs"
    assert main(["reproduce", "toy_cli", "--quick", "--root", str(root), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert seen == {"root": root, "quick": True, "workers": 1}
    assert "0.95" in out and "0.91" in out and "partly" in out
    assert (root / "reproduce" / "toy_cli" / "index.html").is_file()
    assert main(["reproduce", "no_such", "--root", str(root)]) == 2
    assert "toy_cli" in capsys.readouterr().err
    assert main(["reproduce", "toy_cli", "--workers", "0", "--root", str(root)]) == 2
