"""What the commands print at a terminal's width and into a pipe: run ids never cut, short
prefixes that every command accepts, docstrings printed as written, progress lines on stderr,
the live table's score column, `seqmem show`'s summary."""

from __future__ import annotations

import io
import json
import re
from types import SimpleNamespace

import pytest
from rich.console import Console

from seqmem.cli import tables
from seqmem.cli.main import main
from seqmem.engine.display import Display, Status
from seqmem.store import RunStore

IDS = ["20261201-101500-aaaaaa", "20261201-101500-aaabbb", "20261201-101501-cccccc",
       "20261130-090000-dddddd"]


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def store(tmp_path):
    st = RunStore(tmp_path)
    for i, rid in enumerate(IDS):
        st.create_run({"task": {"kind": "n_parity"}, "model": {"d_model": 8 * (i + 1)}},
                      run_id=rid, name=f"point{i}")
        st.update_summary(rid, {"acc_mean": 0.5 + 0.1 * i, "epochs": i + 1, "mixer": "gru",
                                "task": "n_parity", "curriculum": "multi", "knob": "N",
                                "n_solved": 3, "n_current": 4, "curriculum_finished": False,
                                "stop_reason": "time budget", "state_size": 8,
                                "elapsed_s": 12.0})
        st.set_status(rid, "done")
    return st


def test_short_ids_are_the_shortest_unique_prefixes_of_at_least_8():
    short = tables.short_ids(IDS, IDS)
    assert short == {"20261201-101500-aaaaaa": "20261201-101500-aaaa",
                     "20261201-101500-aaabbb": "20261201-101500-aaab",
                     "20261201-101501-cccccc": "20261201-101501",
                     "20261130-090000-dddddd": "20261130"}
    for rid, p in short.items():
        assert [i for i in IDS if i.startswith(p)] == [rid]
    assert tables.short_ids(["20261130-090000-dddddd"], []) == {
        "20261130-090000-dddddd": "20261130"}


@pytest.mark.parametrize("columns", ["80", "200"])
def test_runs_at_80_columns_keeps_every_id_whole_or_by_a_working_prefix(
        capsys, monkeypatch, store, columns):
    monkeypatch.setenv("COLUMNS", columns)
    code, out, _ = run_cli(capsys, "runs", "--root", store.root)
    assert code == 0 and "…" not in out.split("┃ name")[0]
    assert max(len(line) for line in out.splitlines()) <= int(columns)
    short = tables.short_ids(IDS, IDS)
    cells = {c.strip() for line in out.splitlines() for c in line.split("│")}
    for rid in IDS:
        assert short[rid] in cells
        assert (rid in cells) == (columns == "200")  # the full id where there is room
        code, shown, _ = run_cli(capsys, "show", short[rid], "--root", store.root)
        assert code == 0 and rid in shown


def test_runs_best_shows_the_grouping_columns(capsys, monkeypatch, store):
    monkeypatch.setenv("COLUMNS", "160")
    code, out, _ = run_cli(capsys, "runs", "--root", store.root, "--best", "model.d_model")
    assert code == 0
    header = next(line for line in out.splitlines() if "status" in line)
    assert "model.d_model" in header
    assert {"8", "16", "24", "32"} <= {c.strip() for line in out.splitlines()
                                       for c in line.split("│")}


def test_list_tasks_prints_brackets_of_docstrings(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = run_cli(capsys, "list", "tasks")
    assert code == 0
    assert "y_t = (x[t-N+1] + ... + x[t]) mod 2." in out
    assert "x[t-N+1] == x[t]" in out


@pytest.mark.parametrize("doc,first", [
    ("Gated recurrent unit (Cho et al. 2014), as torch.nn.GRU.\n\nMore.",
     "Gated recurrent unit (Cho et al. 2014), as torch.nn.GRU."),
    ("N-parity: y_t = (x[t-N+1] + ... + x[t]) mod 2.\n    Next sentence.",
     "N-parity: y_t = (x[t-N+1] + ... + x[t]) mod 2."),
    ("A NeuroGym environment (e.g. DelayMatchSample-v0): observations in,\n    actions out. "
     "Rest.", "A NeuroGym environment (e.g. DelayMatchSample-v0): observations in, actions "
     "out."),
    ("No full stop in the first paragraph\n\nsecond.", "No full stop in the first paragraph"),
    (None, ""),
])
def test_first_sentence(doc, first):
    assert tables.first_sentence(doc) == first


def test_every_registered_summary_is_a_whole_sentence():
    from seqmem import mixers, tasks

    for reg in (mixers, tasks):
        for name in reg.names():
            text = tables.first_sentence(reg.get(name).__doc__)
            assert text.endswith("."), f"{name}'s summary stops mid-sentence: {text!r}"


def _job(task: str | None, kind: str = "train"):
    cfg = SimpleNamespace(task=SimpleNamespace(kind=task), curriculum=SimpleNamespace(kind="none"),
                          method="finetune")
    return SimpleNamespace(run_id=f"r-{task}-{kind}", label=f"{task}", kind=kind, cfg=cfg)


@pytest.mark.parametrize("tasks_,name", [
    (["n_parity"], "acc"), (["dynamics"], "eval mse"),
    (["n_parity", "dynamics"], "acc | eval mse"), ([None], "acc"),
])
def test_live_table_names_its_score_by_what_the_runs_report(tasks_, name):
    jobs = [_job(t, "continual" if t is None else "train") for t in tasks_]
    display = Display(jobs, Console(file=io.StringIO(), width=200), enabled=False)
    assert display.score_name() == name
    assert [c.header for c in display.table().columns][3] == name


def test_status_into_a_pipe_is_one_timestamped_line_per_message():
    err = io.StringIO()
    with Status(Console(file=io.StringIO()), "analysing r1",
                err=Console(file=err, width=80)) as status:
        status.message("timescales")
        status.update("r1", {"event": "analysis", "message": "ablation at N = 3"})
        status.update("r1", {"event": "epoch"})  # no message: nothing
    lines = err.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert all(re.match(r"^\d\d:\d\d:\d\d analysing r1: ", line) for line in lines)
    assert [line.split(": ", 1)[1] for line in lines] == ["timescales", "ablation at N = 3"]


def test_analyze_with_bad_input_is_one_line_in_a_pipe(capsys, store):
    code, _out, err = run_cli(capsys, "analyze", IDS[0], "--root", store.root,
                             "--what", "timescales")
    assert code == 2  # this run has no checkpoints to analyse
    assert err.count("\n") == 1 and err.startswith("error:"), err


def test_show_is_a_summary_and_json_the_record(capsys, store):
    code, out, _ = run_cli(capsys, "show", IDS[2], "--root", store.root)
    assert code == 0 and not out.lstrip().startswith("{")
    fields = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines()
                  if re.match(r"^\S.*\s{2,}\S", line))
    assert fields["status"] == "done" and fields["mixer"] == "gru"
    assert fields["max N solved"] == "3" and fields["N reached"] == "4"
    assert fields["curriculum finished"].startswith("no")
    assert fields["stopped by"] == "time budget" and fields["accuracy"].startswith("0.700")
    assert fields["folder"].endswith(IDS[2])
    assert "finished" not in {k for k in fields if k != "curriculum finished"}
    code, out, _ = run_cli(capsys, "show", IDS[2], "--root", store.root, "--json")
    record = json.loads(out)
    assert record["row"]["id"] == IDS[2] and "config" in record and "writer" in record


def test_continual_table_lists_runs_by_whole_prefixes_at_80_columns():
    cfg = SimpleNamespace(protocol="n_curriculum", setting=None, mixer="leaky_rnn", steps=100)
    rows = [{"method": "finetune", "avg_acc": "0.5", "bwt": "-0.1", "fwt": "0", "lca": "0.4",
             "runs": f"{IDS[0]}, {IDS[2]}"}]
    out = io.StringIO()
    tables.continual(Console(file=out, width=80), cfg, rows, 2, all_ids=IDS)
    cells = {c.strip() for line in out.getvalue().splitlines() for c in line.split("│")}
    short = tables.short_ids(IDS, IDS)
    assert short[IDS[0]] in cells and short[IDS[2]] in cells
    assert f"runs: {IDS[0]}, {IDS[2]}" in out.getvalue()


def test_flagship_analysis_table_names_measures_and_pairs_mean_with_sd():
    from rich.console import Console

    jobs = [SimpleNamespace(label="single", run_id="a"), SimpleNamespace(label="multi",
                                                                         run_id="b")]
    heads = {"a": {"ablate_longest_rel": 1.0, "ablate_longest_rel_sd": 0.0},
             "b": {"ablate_longest_rel": 0.9, "ablate_longest_rel_sd": 0.1, "extra": 3}}
    console = Console(width=120, record=True)
    tables.headlines(console, jobs, heads)
    text = console.export_text()
    assert "ablate longest-tau unit (rel. acc.): mean ± sd over tie draws" in text
    assert "1.000 ± 0.000" in text and "0.900 ± 0.100" in text
    assert "ablate_longest_rel_sd" not in text and "extra" in text


def test_runs_table_moves_shared_name_and_kind_to_the_title_and_drops_empty_columns():
    from rich.console import Console

    rows = [{"id": f"20261202-00000{i}-abcdef", "name": "quick", "kind": "sweep",
             "status": "done", "summary": {"epochs": 8, "acc_mean": 0.5 + i / 10},
             "updated_at": "2026-12-02T00:35:10"} for i in range(3)]
    console = Console(width=80, record=True)
    tables.runs(console, rows, "runs")
    text = console.export_text()
    assert "runs in runs (name quick, kind sweep)" in text
    assert "max N" not in text and "epochs" in text and "0.700" in text
    assert "12-02 00:35" in text.replace("\n│", " ").replace("│", "") or "12-02" in text
