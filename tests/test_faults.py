"""Faults a new user and a hostile one meet, each a test: bad arguments and configs, sizes
that cannot fit, NaN inputs, Ctrl-C at each phase, a killed sweep driver and its workers.

Store faults are in tests/test_faults_store.py, mixer states and t = 0 in
tests/test_faults_mixers.py."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from seqmem.cli.main import main
from seqmem.config import load_config
from seqmem.engine import Job, execute
from seqmem.engine.api import resume_job
from seqmem.errors import ConfigError
from seqmem.store import RunStore
from seqmem.store.db import pid_alive
from seqmem.tasks.flagship import NParity

TINY = ["model.d_model=8", "train.batch_size=16", "train.steps_per_epoch=2",
        "train.eval_batches=1"]


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ---- arguments and configs ---------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["train", "train.lr"], "error: override 'train.lr' has no value; overrides look like"),
    (["train", "--eval.lengths", "64,128", "train.lr"], "error: override 'train.lr' has no"),
    (["train", "task.N=5"], "error: task.N: the multi curriculum sets N (from "
                            "curriculum.n_start=2"),
    (["train", "task.N=1000000000", "--curriculum", "none"], "error: task.N: one batch of 256 "
                                                             "sequences of up to"),
    (["train", "--task", "mqar", "task.seq_len=100000000", "curriculum.kind=none"],
     "error: task.seq_len: one batch"),
    (["sweep", "nosuch.yaml", "--workers", "0"], "error: "),
])
def test_bad_arguments_are_one_line_and_create_no_run(capsys, tmp_path, args, message):
    code, _out, err = cli(capsys, *args, "--root", tmp_path)
    assert code == 2 and err.startswith(message), err
    assert err.count("\n") == 1
    assert not (tmp_path / "seqmem.db").exists() or RunStore(tmp_path).list_runs() == []


def test_config_files_that_are_empty_folders_or_broken(capsys, tmp_path):
    (tmp_path / "empty.yaml").write_text("\n")
    code, _, err = cli(capsys, "train", tmp_path / "empty.yaml", "--root", tmp_path / "r")
    assert code == 2 and "is empty; give at least one key" in err
    code, _, err = cli(capsys, "train", tmp_path, "--root", tmp_path / "r")
    assert code == 2 and "is a folder; give a YAML file" in err
    (tmp_path / "bad.yaml").write_text("model:\n  d_model: [1, 2\n")
    code, _, err = cli(capsys, "train", tmp_path / "bad.yaml", "--root", tmp_path / "r")
    assert code == 2 and "not valid YAML (line 3, column 1)" in err, err


def test_eval_lengths_flag_then_overrides(tmp_path):
    from seqmem.cli.parser import join_dotted

    assert join_dotted(["train", "--eval.lengths", "64,128", "train.lr=1e-3"]) == [
        "train", "eval.lengths=64,128", "train.lr=1e-3"]


def test_a_curriculum_stores_the_knob_value_it_starts_from():
    cfg = load_config(None, ["curriculum.n_start=4"])
    assert cfg.task.N == 4  # not the task's default 2, which never ran
    assert load_config(None, ["task.N=5", "curriculum.n_start=5"]).task.N == 5
    assert load_config(None, ["task.N=5", "curriculum.kind=none"]).task.N == 5
    again = load_config(cfg.model_dump(mode="json"))
    assert again == cfg
    with pytest.raises(ConfigError) as e:
        load_config(None, ["task.kind=mqar", "curriculum.kind=multi", "curriculum.knob=n_pairs",
                           "curriculum.n_max=8", "task.n_pairs=6"])
    assert e.value.path == "task.n_pairs"


# ---- inside a run ------------------------------------------------------------------------------
def _job(store, overrides):
    cfg = load_config(None, [*TINY, *overrides])
    run = store.create_run(cfg.model_dump(mode="json"))
    return Job(cfg, run.id, str(run.dir), label="t")


def test_a_nan_input_fails_the_run_naming_the_position(tmp_path, monkeypatch):
    real = NParity.sample

    def poisoned(self, batch_size, *, generator):
        batch = real(self, batch_size, generator=generator)
        batch.inputs[3, 1, 0] = float("nan")
        return batch

    monkeypatch.setattr(NParity, "sample", poisoned)
    store = RunStore(tmp_path)
    job = _job(store, ["train.max_epochs=2"])
    out = execute([job], store)
    row = store.get(job.run_id)
    assert out.status[job.run_id] == "failed" and row["status"] == "failed"
    assert "non-finite input (nan) at example 3, step 1" in row["reason"]
    assert store.open_run(job.run_id).metrics() == []


def test_a_run_interrupted_before_its_first_epoch_resumes(tmp_path):
    store = RunStore(tmp_path)
    job = _job(store, ["train.max_epochs=2"])

    import seqmem.engine.run as engine_run

    real = engine_run.guarded

    def stop_at_start(job, emit):
        def emit_then_stop(ev):
            emit(ev)
            if ev["event"] == "start":
                raise KeyboardInterrupt
        return real(job, emit_then_stop)

    engine_run.guarded = stop_at_start
    try:
        out = execute([job], store)
    finally:
        engine_run.guarded = real
    row = store.get(job.run_id)
    assert out.interrupted and row["status"] == "interrupted" and "--resume" in row["reason"]
    run = store.open_run(job.run_id)
    assert "last" in run.checkpoints() and run.metrics() == []
    out = execute([resume_job(store, job.run_id)], store)
    assert store.get(job.run_id)["status"] == "done"
    assert [m["epoch"] for m in run.metrics()] == [1, 2]


# ---- commands on runs that are not what they should be ---------------------------------------
def test_report_refuses_broken_runs_and_analyze_says_a_run_failed(capsys, tmp_path):
    store = RunStore(tmp_path)
    job = _job(store, ["train.max_epochs=1"])
    execute([job], store)
    (Path(job.run_dir) / "summary.json").write_text("{not json")
    code, _, err = cli(capsys, "report", job.run_id, "--root", tmp_path)
    assert code == 2 and "summary.json' is not valid JSON" in err and err.count("\n") == 1
    store.set_status(job.run_id, "failed", "non-finite loss")
    code, _, err = cli(capsys, "analyze", job.run_id, "--root", tmp_path)
    assert f"note: run {job.run_id} is failed (non-finite loss)" in err
    for p in Path(job.run_dir).rglob("*"):
        if p.is_file():
            p.unlink()
    for p in sorted(Path(job.run_dir).rglob("*"), reverse=True):
        p.rmdir()
    Path(job.run_dir).rmdir()
    code, _, err = cli(capsys, "report", job.run_id, "--root", tmp_path)
    assert code == 2 and "is gone" in err and err.count("\n") == 1


# ---- Ctrl-C and killed drivers (subprocesses) --------------------------------------------------
def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background job's children ignore it


def _rows(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("SELECT id, status, pid, reason FROM runs").fetchall()
    except sqlite3.OperationalError:
        return []


def _wait(pred, timeout=120.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_ctrl_c_of_the_flagship_before_its_first_epoch(tmp_path):
    """A terminal's Ctrl-C reaches the driver and its workers: both runs are recorded as
    interrupted, and nothing prints an exit-handler traceback."""
    p = subprocess.Popen([sys.executable, "-m", "seqmem.cli.main", "run", "--quick",
                          "--no-analysis", "--root", str(tmp_path), "--no-progress"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, preexec_fn=_default_sigint)
    db = tmp_path / "seqmem.db"
    _wait(lambda: len(_rows(db)) == 2, what="the two runs")
    os.killpg(p.pid, signal.SIGINT)
    try:
        _out, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise
    assert p.returncode == 130, err
    assert "Exception ignored" not in err and "Traceback" not in err, err
    assert {r[1] for r in _rows(db)} == {"interrupted"}


def test_a_killed_sweep_driver_leaves_no_orphans(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "o", "overrides": [
        *TINY, "train.max_epochs=100000"], "grid": {"seed": [0, 1]}}))
    root = tmp_path / "runs"
    driver = subprocess.Popen([sys.executable, "-m", "seqmem.cli.main", "sweep", str(sweep),
                               "--root", str(root), "--backend", "process", "--workers", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    db = root / "seqmem.db"
    workers = _wait(lambda: (lambda rs: rs if len(rs) == 2 else None)(
        [r for r in _rows(db) if r[1] == "running" and r[2] and r[2] != driver.pid]),
        what="two running workers")
    _wait(lambda: all((root / r[0] / "metrics.jsonl").exists() for r in workers),
          what="an epoch of each")
    driver.kill()  # the driver alone: its workers are left behind
    driver.wait(timeout=30)
    try:
        _wait(lambda: not any(pid_alive(r[2]) for r in workers), timeout=30,
              what="the orphaned workers to exit")
    finally:
        for r in workers:
            if pid_alive(r[2]):
                os.kill(r[2], signal.SIGKILL)
    rows = {r[0]: r for r in _rows(db)}
    for r in workers:
        assert rows[r[0]][1] == "interrupted" and "driver was gone" in rows[r[0]][3]
    # the checkpoints stay: the next sweep resumes them
    assert all("last" in RunStore(root).open_run(r[0]).checkpoints() for r in workers)


def _interrupt(p: subprocess.Popen, timeout: float = 120) -> str:
    os.killpg(p.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole process group
    try:
        _out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise
    return err


def test_ctrl_c_of_a_process_sweep_records_every_run_as_interrupted(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "c", "overrides": [
        *TINY, "train.max_epochs=100000"], "grid": {"seed": [0, 1, 2]}}))
    root = tmp_path / "runs"
    p = subprocess.Popen([sys.executable, "-m", "seqmem.cli.main", "sweep", str(sweep),
                          "--root", str(root), "--backend", "process", "--workers", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, preexec_fn=_default_sigint)
    db = root / "seqmem.db"
    _wait(lambda: len([r for r in _rows(db) if r[1] == "running"]) == 2, what="two runs")
    err = _interrupt(p)
    assert p.returncode == 130, err
    assert "Exception ignored" not in err and "Traceback" not in err, err
    rows = _rows(db)
    assert len(rows) == 2 and {r[1] for r in rows} == {"interrupted"}  # the third never began


def test_ctrl_c_during_the_flagship_analysis_keeps_the_trained_runs(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "seqmem.cli.main", "run", "--quick",
                          "--root", str(tmp_path), "--no-progress",
                          "train.max_time_s=2", "model.d_model=16"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, preexec_fn=_default_sigint)
    db = tmp_path / "seqmem.db"
    try:  # a loaded machine starts the two training processes slowly: wait long enough
        _wait(lambda: (lambda rs: len(rs) == 2 and {r[1] for r in rs} == {"done"})(_rows(db)),
              timeout=300.0, what="both runs trained")
    except AssertionError:
        os.killpg(p.pid, signal.SIGKILL)  # leave no process behind for the next tests
        p.communicate()
        raise
    time.sleep(0.5)  # into the analysis
    err = _interrupt(p)
    assert p.returncode in (0, 130), err  # 0: the analysis was already over
    assert "Exception ignored" not in err and "Traceback" not in err, err
    assert {r[1] for r in _rows(db)} == {"done"}


def _train(root, *args):
    return subprocess.Popen([sys.executable, "-m", "seqmem.cli.main", "train", *args,
                             "--root", str(root), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_default_sigint)


def test_two_writers_of_one_run_are_refused_and_no_epoch_is_logged_twice(tmp_path):
    first = _train(tmp_path, *TINY, "train.max_epochs=100000")
    db = tmp_path / "seqmem.db"
    rid = _wait(lambda: next((r[0] for r in _rows(db) if r[1] == "running"), None),
                what="the run")
    metrics = tmp_path / rid / "metrics.jsonl"
    _wait(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, what="epochs")
    # a resume while it trains: refused, naming the process that writes it
    r = subprocess.run([sys.executable, "-m", "seqmem.cli.main", "train", "--resume", rid,
                        "train.max_epochs=100001", "--root", str(tmp_path), "--no-progress"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"pid {first.pid}" in r.stderr and r.stderr.count("\n") == 1
    _interrupt(first)
    assert first.returncode == 130
    # two resumes started together: one trains, the other is refused; epochs stay unique
    done = len(RunStore(tmp_path).open_run(rid).metrics())
    pair = [_train(tmp_path, "--resume", rid, f"train.max_epochs={done + 30}")
            for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in pair]
    codes = sorted(p.returncode for p in pair)
    # together: one trains, the other is refused; on a loaded machine the second may start
    # only after the first has finished, and then has nothing left to train
    assert codes in ([0, 0], [0, 1], [0, 2]), (codes, outs)
    if codes != [0, 0]:
        assert any("is being written by" in err or "refused" in out + err for out, err in outs)
    epochs = [m["epoch"] for m in RunStore(tmp_path).open_run(rid).metrics() if "epoch" in m]
    assert epochs == list(range(1, done + 31))
    assert RunStore(tmp_path).get(rid)["status"] == "done"
