"""Sweeps: sweep-file errors, grid expansion, skip/resume on re-run, worker death and retry,
queries over the store (--where, best per group, exports)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from seqmem.errors import ConfigError, SeqmemError
from seqmem.store import RunStore
from seqmem.store.query import best_per_group, export, matches, parse_where, run_field
from seqmem.sweep import expand, plan_sweep, read_sweep, run_sweep

TINY = ["task.kind=n_parity", "task.N=2", "curriculum.kind=none", "model.d_model=8",
        "train.optimizer=adam", "train.batch_size=16", "train.steps_per_epoch=2",
        "train.eval_batches=1", "train.max_epochs=2"]


def write(tmp_path: Path, data: dict, name: str = "sw.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_sweep_file_errors_are_one_line(tmp_path):
    cases = [
        ({"name": "x", "gird": {"seed": [0]}}, r"unknown key; accepted: name, base"),
        ({"name": "x", "grid": {"seed": []}}, r"grid\.seed is an empty list"),
        ({"name": "x"}, r"has no runs"),
        ({"name": "x", "grid": {"train.lr": [-1]}}, r"point train\.lr=-1: train\.lr: "),
        ({"name": "x", "grid": {"model.mixer.kind": ["nosuch"]}}, r"unknown mixer 'nosuch'"),
        ({"name": "x", "grid": {"train.nope": [1]}}, r"train\.nope: unknown key"),
    ]
    for data, pattern in cases:
        with pytest.raises(ConfigError, match=pattern) as info:
            expand(read_sweep(write(tmp_path, data)))
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="not found"):
        read_sweep(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_sweep(bad)


def test_expand_grid_product_runs_and_python_file(tmp_path):
    spec = read_sweep(write(tmp_path, {
        "overrides": TINY, "grid": {"model.mixer.kind": ["gru", "lstm"], "train.lr": [0.1, 0.2]},
        "seeds": [0, 1, 2], "runs": [{"model.d_model": 4}, {"model.d_model": 6}]}, "g.yaml"))
    pts = expand(spec)
    assert spec.name == "g" and len(pts) == 2 * 2 * 3 * 2
    assert {c.config_hash() for _, c in pts}.__len__() == 24
    kinds = sorted({(p["model.mixer.kind"], c.model.mixer.kind) for p, c in pts})
    assert kinds == [("gru", "gru"), ("lstm", "lstm")]
    assert all(c.name == "g" and c.model.d_model == p["model.d_model"] for p, c in pts)
    # the same resolved config twice is one run
    dup = read_sweep(write(tmp_path, {"overrides": TINY, "grid": {"seed": [0, 0, 1]}}))
    assert len(expand(dup)) == 2
    py = tmp_path / "s.py"
    py.write_text(f"SWEEP = {{'overrides': {TINY!r}, 'grid': {{'seed': [3, 4]}}}}\n")
    assert [c.seed for _, c in expand(read_sweep(py))] == [3, 4]


def test_inline_sweep_rerun_skips_done_and_resumes_interrupted(tmp_path, monkeypatch):
    spec = read_sweep(write(tmp_path, {"name": "s", "overrides": TINY,
                                       "grid": {"seed": [0, 1, 2, 3]}}))
    store = RunStore(tmp_path / "runs")
    import seqmem.engine.run as drv  # the engine runs each inline job through `guarded`

    real = drv.guarded
    calls = []

    def third_is_interrupted(job, emit):
        calls.append(job.cfg.seed)
        if len(calls) == 3:  # Ctrl-C during the third run, after its first epoch
            def emit_then_stop(ev):
                emit(ev)
                if ev["event"] == "epoch":
                    raise KeyboardInterrupt
            return real(job, emit_then_stop)
        return real(job, emit)

    monkeypatch.setattr(drv, "guarded", third_is_interrupted)
    res = run_sweep(spec, store, workers=1)
    assert res.interrupted and calls == [0, 1, 2]
    assert sorted(res.status.values()) == ["done", "done", "interrupted"]
    rows = store.list_runs(kind="sweep")
    assert len(rows) == 3  # the fourth never started: no row
    monkeypatch.setattr(drv, "guarded", real)
    plan = plan_sweep(spec, store)
    assert len(plan.done) == 2 and [j.resume for j in plan.jobs] == [True, False]
    res = run_sweep(spec, store, workers=1)
    assert not res.interrupted and set(res.status.values()) == {"done"}
    rows = store.list_runs(kind="sweep")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    seeds = sorted(store.open_run(r["id"]).config()["seed"] for r in rows)
    assert seeds == [0, 1, 2, 3]  # every point exactly once
    resumed = next(r for r in rows if store.open_run(r["id"]).config()["seed"] == 2)
    assert [m["epoch"] for m in store.open_run(resumed["id"]).metrics()] == [1, 2]
    assert plan_sweep(spec, store).jobs == []
    # the dashboard of the sweep: every run listed, the state-size figure drawn
    from seqmem.cli.main import main

    out = tmp_path / "dash"
    assert main(["report", "--sweep", "s", "--root", str(store.root), "-o", str(out)]) == 0
    page = (out / "dashboard.html").read_text()
    assert all(r["id"] in page for r in rows)
    assert (out / "accuracy_vs_state_size.png").exists()
    assert main(["report", "--sweep", "nosuch", "--root", str(store.root)]) == 2


def _wait(pred, timeout=240.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _rows(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("SELECT id, status, pid FROM runs").fetchall()
    except sqlite3.OperationalError:
        return []


def _sweep_cmd(path, root, *extra):
    return [sys.executable, "-m", "seqmem.cli.main", "sweep", str(path), "--root", str(root),
            *extra]


def test_killed_worker_is_recorded_and_retried_once_each(tmp_path):
    slow = [o for o in TINY if not o.startswith("train.max_epochs")] + [
        "train.max_epochs=25", "train.steps_per_epoch=5"]
    path = write(tmp_path, {"name": "k", "overrides": slow, "grid": {"seed": [0, 1]},
                            "retries": 2})
    root = tmp_path / "runs"
    proc = subprocess.Popen(_sweep_cmd(path, root, "--backend", "process", "--workers", "2"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    db = root / "seqmem.db"
    victim = _wait(lambda: next((r for r in _rows(db) if r[1] == "running" and r[2]
                                 and r[2] != proc.pid), None), what="a running worker")
    metrics = root / victim[0] / "metrics.jsonl"
    _wait(lambda: metrics.exists() and metrics.read_text().count("\n") >= 1,
          what="an epoch")
    os.kill(victim[2], signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "retrying" in out and "exit code -9" in out
    store = RunStore(root)
    rows = store.list_runs(kind="sweep")
    assert len(rows) == 2 and {r["status"] for r in rows} == {"done"}
    killed = store.open_run(victim[0])
    epochs = [m["epoch"] for m in killed.metrics() if "epoch" in m]
    assert epochs == list(range(1, 26))  # resumed from its last checkpoint, nothing twice


HAS_RAY = __import__("importlib").util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="needs ray (pip install seqmem[scale])")


@needs_ray
def test_ray_sweep_runs_and_records(tmp_path):
    path = write(tmp_path, {"name": "r", "overrides": TINY, "grid": {"seed": [0, 1]}})
    root = tmp_path / "runs"
    r = subprocess.run(_sweep_cmd(path, root, "--backend", "ray", "--workers", "2"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(ray," in r.stdout and "2 done" in r.stdout
    rows = RunStore(root).list_runs(kind="sweep")
    assert len(rows) == 2 and {x["status"] for x in rows} == {"done"}
    assert all(x["summary"]["epochs"] == 2 for x in rows)


@pytest.mark.slow  # about 80 s; the inline re-run test covers resuming in the default suite
@pytest.mark.parametrize("backend", ["process", pytest.param("ray", marks=needs_ray)])
def test_killed_driver_rerun_finishes_only_missing(tmp_path, backend):
    path = write(tmp_path, {"name": "r", "overrides": TINY, "grid": {"seed": [0, 1, 2, 3]}})
    root = tmp_path / "runs"
    proc = subprocess.Popen(_sweep_cmd(path, root, "--backend", backend, "--workers", "2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    db = root / "seqmem.db"
    _wait(lambda: sum(r[1] == "done" for r in _rows(db)) >= 1, what="a run done")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Ray processes
    proc.wait(timeout=60)
    before = {r[0] for r in _rows(db) if r[1] == "done"}
    assert 1 <= len(before) < 4
    r = subprocess.run(_sweep_cmd(path, root, "--backend", backend, "--workers", "2"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = RunStore(root).list_runs(kind="sweep")
    assert len(rows) == 4 and {x["status"] for x in rows} == {"done"}
    seeds = sorted(RunStore(root).open_run(x["id"]).config()["seed"] for x in rows)
    assert seeds == [0, 1, 2, 3]
    assert before <= {x["id"] for x in rows}  # the done ones were kept, not redone


# ---- queries ------------------------------------------------------------------------------------
ROWS = [
    {"id": "a", "status": "done", "summary": {"mixer": "gru", "task": "mqar", "acc_mean": 0.95,
                                              "point": {"train.lr": 0.1}},
     "config": {"model": {"d_model": 64}}},
    {"id": "b", "status": "done", "summary": {"mixer": "gru", "task": "mqar", "acc_mean": 0.97,
                                              "point": {"train.lr": 0.01}},
     "config": {"model": {"d_model": 64}}},
    {"id": "c", "status": "failed", "summary": {"mixer": "lstm", "task": "mqar",
                                                "acc_mean": 0.5}, "config": {"model": {
                                                    "d_model": 128}}},
    {"id": "d", "status": "done", "summary": {"mixer": "lstm", "task": "n_parity"},
     "config": {"model": {"d_model": 128}}},
]


def test_where_fields_best_and_exports():
    assert run_field(ROWS[0], "acc") == 0.95 and run_field(ROWS[0], "train.lr") == 0.1
    assert run_field(ROWS[0], "model.d_model") == 64 and run_field(ROWS[3], "acc") is None

    def ids(expr):
        return [r["id"] for r in ROWS if matches(r, parse_where(expr))]

    assert ids("task=mqar and acc>0.9") == ["a", "b"]
    assert ids("model.d_model>=128") == ["c", "d"]
    assert ids("status != done") == ["c"]
    assert ids("acc<0.96 AND mixer=gru") == ["a"]
    for bad in ("acc >", "= 3", "acc ~ 3"):
        with pytest.raises(SeqmemError, match="--where"):
            parse_where(bad)
    best = best_per_group(ROWS, ["mixer"])
    assert [r["id"] for r in best] == ["b", "c"]
    assert [r["id"] for r in best_per_group(ROWS, ["mixer"], maximize=False)] == ["a", "c"]
    recs = json.loads(export(ROWS[:2], "json"))
    assert recs[1]["acc_mean"] == 0.97 and recs[1]["train.lr"] == 0.01
    lines = export(ROWS[:2], "csv").strip().splitlines()
    assert lines[0].startswith("id,name,kind,status") and len(lines) == 3


@pytest.mark.slow
@needs_ray
def test_quick_sweep_of_24_runs_on_ray(tmp_path):
    root = tmp_path / "runs"
    quick = Path(__file__).parent.parent / "experiments" / "sweeps" / "quick.yaml"
    r = subprocess.run(_sweep_cmd(quick, root, "--backend", "ray"), capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = RunStore(root).list_runs(kind="sweep")
    assert len(rows) == 24 and {x["status"] for x in rows} == {"done"}


def test_to_dataframe_has_a_row_per_run():
    pd = pytest.importorskip("pandas")
    from seqmem.store.query import to_dataframe

    df = to_dataframe(ROWS)
    assert isinstance(df, pd.DataFrame) and list(df["id"]) == ["a", "b", "c", "d"]
    assert df.loc[df["id"] == "b", "acc_mean"].item() == 0.97
    assert df.loc[df["id"] == "a", "train.lr"].item() == 0.1


def test_mlflow_export_logs_each_run_once(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from seqmem.cli.main import main

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    spec = read_sweep(write(tmp_path, {"name": "m", "overrides": TINY, "grid": {"seed": [0, 1]}}))
    store = RunStore(tmp_path / "runs")
    run_sweep(spec, store, workers=1)
    uri = (tmp_path / "mlruns").as_uri()
    args = ["runs", "--sweep", "m", "--root", str(store.root), "--mlflow", uri]
    assert main(args) == 0
    assert main(args) == 0  # again: nothing new
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("seqmem")
    got = client.search_runs([exp.experiment_id])
    assert len(got) == 2
    rows = {r["id"]: r for r in store.list_runs(kind="sweep")}
    for r in got:
        row = rows[r.data.tags["seqmem.run_id"]]
        assert r.data.metrics["acc_mean"] == pytest.approx(row["summary"]["acc_mean"])
        assert r.data.params["seed"] == str(store.open_run(row["id"]).config()["seed"])
        assert r.data.params["model.mixer.kind"] == "leaky_rnn"
