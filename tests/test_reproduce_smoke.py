"""Every reproduction's quick form from its one command, end to end, as a smoke test.

`seqmem reproduce NAME --quick --seeds 0 --workers 1` runs the experiment's quick sweep with
one seed, in this process (one worker: no process start per run), then its analysis, tables,
verdict and page. The flagship's quick form trains for 30 s per run; here an override cuts it
to 3 s, which also checks that an override reaches every run and is named in the verdict.
The quick forms as written (every seed, two workers) run under -m slow in
test_reproduce.py and test_reproduce_findings.py.
"""

from __future__ import annotations

import re

import pytest

from seqmem.cli.main import main
from seqmem.reproduce import REPRODUCTIONS, SweepChanges, get
from seqmem.store import RunStore

#: the overrides each smoke run adds to the quick form (the flagship's runs have a wall-time
#: budget; the others a number of updates)
CUT = {"flagship_seeds": ["train.max_time_s=3"]}


@pytest.mark.parametrize("name", sorted(REPRODUCTIONS))
def test_quick_form_runs_from_one_command(name, tmp_path, capsys):
    rc = main(["reproduce", name, "--quick", "--seeds", "0", "--workers", "1", "--root",
               str(tmp_path), "--no-progress", *CUT.get(name, [])])
    out = capsys.readouterr().out
    assert rc == 0, out
    # ours beside the paper's, and a verdict naming what the command changed
    assert f"{name}: ours" in out and f"{name}: the paper's" in out
    verdict = re.search(r"verdict: (reproduced|partly|not reproduced)\. (.*)", out, re.S)
    assert verdict, out
    changed = SweepChanges((0,), tuple(CUT.get(name, []))).describe()
    assert " ".join(verdict.group(2).split()).startswith(
        f"Changed from the sweep file: {changed}."), out
    # every run of the sweep is done, with seed 0 only, and carries the override
    store = RunStore(tmp_path)
    rows = store.list_runs()
    assert rows and all(r["status"] == "done" for r in rows), rows
    configs = [store.open_run(r["id"]).config() for r in rows]
    assert {c["seed"] for c in configs} == {0}
    if name == "flagship_seeds":
        assert {c["train"]["max_time_s"] for c in configs} == {3}
    # the page, with its figures inlined
    page = tmp_path / "reproduce" / name / "index.html"
    html = page.read_text()
    assert "verdict:" in html and "Changed from the sweep file" in html
    assert html.count("data:image/png;base64,") >= 1
    assert get(name).directory.startswith("experiments/")


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "a,b"], "error: --seeds must be a comma-separated list, got 'a,b'"),
    (["--seeds", "0,-1"], "error: --seeds must be integers >= 0, comma-separated (e.g. 0,1,2), "
                          "got 0, -1"),
    (["--seeds", ","], "error: --seeds must be integers >= 0, comma-separated (e.g. 0,1,2), "
                       "got none"),
    (["--workers", "0"], "error: --workers must be an integer >= 1 (runs at a time), got 0"),
])
def test_bad_changes_are_one_line_before_any_run(argv, message, tmp_path, capsys):
    rc = main(["reproduce", "gtf", "--quick", "--root", str(tmp_path), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == message
    assert not (tmp_path / "seqmem.db").exists() or not RunStore(tmp_path).list_runs()


def test_an_unknown_override_names_the_key_and_the_accepted_ones(tmp_path, capsys):
    rc = main(["reproduce", "gtf", "--quick", "--workers", "1", "--root", str(tmp_path),
               "--no-progress", "train.bogus=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "train.bogus: unknown key; accepted:" in err[0] and "max_time_s" in err[0]
    assert not RunStore(tmp_path).list_runs()
