"""Faults of the run store: run locks between processes (and a holder killed with -9),
metrics logged once per epoch, read-only stores (another user, a read-only mount), a corrupt
or locked index, a full disk, a root that is a file, an invalid config.yaml; and the index
checked against the run folders and rebuilt from them."""

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from seqmem.store import Run, RunLocked, RunStore, StoreError, config_hash
from seqmem.store import run as run_mod
from seqmem.store import schema as schema_mod
from seqmem.store.faults import db_error, since_text
from seqmem.store.repair import NO_END, read_folder

HOST = socket.gethostname()
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _python(code: str, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_line(proc: subprocess.Popen, expect: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip() == expect:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"the child ended ({proc.returncode}): {proc.stderr.read()}")
    raise AssertionError(f"timed out waiting for {expect!r}")


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# ---- run locks ---------------------------------------------------------------------------
HOLD = """
import sys, time
from seqmem.store import RunStore
with RunStore(sys.argv[1]).lock(sys.argv[2]):
    print("locked", flush=True)
    time.sleep(float(sys.argv[3]))
print("released", flush=True)
"""


def test_a_run_locked_by_another_process_is_refused_and_a_killed_holder_frees_it(tmp_path):
    store = RunStore(tmp_path)
    rid = store.create_run({"seed": 0}).id
    assert store.lock_holder(rid) is None  # nobody holds it: this process holds none either
    child = _python(HOLD, tmp_path, rid, 600)
    try:
        _wait_line(child, "locked")
        holder = store.lock_holder(rid)
        assert holder["pid"] == child.pid and holder["host"] == HOST and holder["run"] == rid
        with pytest.raises(RunLocked) as info, store.lock(rid):
            pass
        expect = (f"run {rid} is being written by pid {child.pid} on host {HOST} since "
                  f"{since_text(holder['since'])}; wait for it or stop it")
        assert _one_line(info.value) == expect
        assert info.value.holder == holder
        with pytest.raises(RunLocked, match=f"pid {child.pid}"):
            store.require_unlocked(rid[:10])
        child.send_signal(signal.SIGKILL)  # no cleanup runs: the OS drops the flock
        child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    assert store.lock_holder(rid) is None
    with store.lock(rid) as mine:
        assert mine["pid"] == os.getpid()
        assert store.lock_holder(rid) == mine
        store.require_unlocked(rid)  # this process's own lock is no refusal
    assert (tmp_path / rid / ".lock").read_bytes() == b""  # details cleared on release


def test_a_child_cannot_lock_what_its_parent_holds(tmp_path):
    store = RunStore(tmp_path)
    rid = store.create_run({}).id
    code = ("import sys\nfrom seqmem.store import RunStore, RunLocked\n"
            "try:\n    RunStore(sys.argv[1]).lock(sys.argv[2]).__enter__()\n"
            "    print('locked')\nexcept RunLocked as e:\n    print(e)\n")
    with store.lock(rid) as mine:
        out, err = _python(code, tmp_path, rid).communicate(timeout=120)
    assert out.strip() == (f"run {rid} is being written by pid {os.getpid()} on host {HOST} "
                           f"since {since_text(mine['since'])}; wait for it or stop it"), err
    out, err = _python(code, tmp_path, rid).communicate(timeout=120)  # released: it may
    assert out.strip() == "locked", err


RACE = """
import os, sys, time
from seqmem.store import RunLocked, RunStore
store, rid, go = RunStore(sys.argv[1]), sys.argv[2], sys.argv[3]
while not os.path.exists(go):
    time.sleep(0.001)
try:
    with store.lock(rid):
        run = store.open_run(rid)
        for epoch in range(1, 81):
            run.log({"epoch": epoch, "pid": os.getpid()})
        time.sleep(1.0)
    print("trained")
except RunLocked as e:
    print(e)
"""


def test_two_resumes_started_together_train_the_run_once(tmp_path):
    store = RunStore(tmp_path)
    rid = store.create_run({}).id
    go = tmp_path / "go"
    kids = [_python(RACE, tmp_path, rid, go) for _ in range(2)]
    time.sleep(0.5)
    go.touch()
    outs = [k.communicate(timeout=120) for k in kids]
    lines = [o.strip() for o, _ in outs]
    assert sorted(x == "trained" for x in lines) == [False, True], outs
    winner = kids[lines.index("trained")].pid
    refused = lines[1 - lines.index("trained")]
    assert refused.startswith(f"run {rid} is being written by pid {winner} on host {HOST}")
    records = store.open_run(rid).metrics()
    assert [r["epoch"] for r in records] == list(range(1, 81))
    assert {r["pid"] for r in records} == {winner}


def test_the_lock_is_reentrant_in_its_process_and_reports_no_holder_when_free(tmp_path):
    run = Run("r1", tmp_path)
    assert run.lock_holder() is None
    with run.lock() as outer:
        with Run("r1", tmp_path).lock() as inner:  # another Run of the same folder
            assert inner == outer
        assert run.lock_holder() == outer  # still held after the inner block
        info = json.loads((tmp_path / ".lock").read_text())
        assert info == outer and info["pid"] == os.getpid()
    assert run.lock_holder() is None
    assert str(RunLocked("r1", {})) == ("run r1 is being written by another process; wait "
                                        "for it or stop it")


def test_a_run_whose_lock_is_held_is_not_stale(tmp_path):
    store = RunStore(tmp_path, stale_after_s=60)
    rid = store.create_run({}).id
    store.heartbeat(rid, pid=_dead_pid())  # the recorded process is gone ...
    assert store.get(rid)["status"] == "stale"
    with store.lock(rid):  # ... but a process writes the run
        assert store.get(rid)["status"] == "running"
        assert [r["id"] for r in store.list_runs(status="running")] == [rid]
    assert store.get(rid)["status"] == "stale"


# ---- metrics once per epoch --------------------------------------------------------------
def _lines(run: Run) -> list[dict]:
    return [json.loads(x) for x in (run.dir / "metrics.jsonl").read_text().splitlines()
            if x.strip()]


def test_an_epoch_is_logged_once_and_events_always(tmp_path):
    run = Run("r", tmp_path)
    assert [run.log({"epoch": e, "loss": 1.0 / e}) for e in (1, 2, 3)] == [True] * 3
    assert run.log({"epoch": 3, "loss": 9.0}) is False  # resumed after the checkpoint
    assert run.log({"epoch": 2}) is False
    assert run.log({"event": "free_run", "d_h": 0.5}) is True
    assert run.log({"event": "free_run", "d_h": 0.5}) is True  # events are not ordered
    assert run.log({"epoch": 3}) is False  # the last epoch is found behind the events
    assert run.log({"epoch": 4}) is True
    assert [(r.get("epoch"), r.get("event")) for r in _lines(run)] == [
        (1, None), (2, None), (3, None), (None, "free_run"), (None, "free_run"), (4, None)]
    assert _lines(run)[2]["loss"] == 1.0 / 3  # the first record of epoch 3 stays
    # a line cut short by a kill is not the last epoch, and does not swallow the next one
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 5, "lo')
    assert run.log({"epoch": 4}) is False and run.log({"epoch": 5}) is True
    assert [r["epoch"] for r in run.metrics() if "epoch" in r] == [1, 2, 3, 4, 5]
    # continual runs are ordered by experience
    cont = Run("c", tmp_path / "c")
    assert [cont.log({"experience": i}) for i in (0, 1, 1, 0, 2)] == [True, True, False,
                                                                      False, True]


def test_the_last_epoch_is_found_far_from_the_end(tmp_path):
    run = Run("r", tmp_path)
    run.log({"epoch": 7, "acc": [0.5] * 10})
    for _ in range(3):  # events longer than the blocks read from the end
        run.log({"event": "eval_lengths", "acc_by_length": ["x" * 50] * 2000})
    assert (tmp_path / "metrics.jsonl").stat().st_size > 4 * run_mod.TAIL_BLOCK
    assert run.log({"epoch": 7}) is False and run.log({"epoch": 6}) is False
    assert run.log({"epoch": 8}) is True
    assert [r.get("epoch") for r in _lines(run)] == [7, None, None, None, 8]


APPEND = """
import os, sys, time
from seqmem.store import Run
run, go = Run("r", sys.argv[1]), sys.argv[2]
while not os.path.exists(go):
    time.sleep(0.001)
for epoch in range(1, 201):
    run.log({"epoch": epoch, "pid": os.getpid()})
"""


def test_two_appenders_without_the_run_lock_never_duplicate_an_epoch(tmp_path):
    go = tmp_path / "go"
    kids = [_python(APPEND, tmp_path, go) for _ in range(2)]
    time.sleep(0.5)
    go.touch()
    for k in kids:
        _, err = k.communicate(timeout=120)
        assert k.returncode == 0, err
    epochs = [r["epoch"] for r in _lines(Run("r", tmp_path))]
    assert epochs == list(range(1, 201))


def test_metrics_of_an_older_version_keep_the_last_record_of_each_epoch(tmp_path):
    recs = [{"epoch": 1, "v": "a"}, {"epoch": 2, "v": "a"}, {"epoch": 3, "v": "a"},
            {"event": "advance"}, {"epoch": 2, "v": "b"}, {"epoch": 3, "v": "b"},
            {"epoch": 4, "v": "b"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    got = Run("r", tmp_path).metrics()
    assert got == [recs[0], recs[3], recs[4], recs[5], recs[6]]


# ---- read-only stores ----------------------------------------------------------------------
READER = """
import json, os, sys
from seqmem.store import RunStore, StoreError
from seqmem.store.query import select
store, rid = RunStore(sys.argv[1]), sys.argv[2]
if os.geteuid() == 0:  # read as a user who may not write this store
    os.setgid(65534)
    os.setuid(65534)
out = {"list": [r["id"] for r in store.list_runs()], "status": store.get(rid)["status"],
       "by_hash": [r["id"] for r in store.find_by_hash(store.get(rid)["config_hash"])],
       "show": sorted(store.describe(rid)), "config": store.open_run(rid).config(),
       "select": [r["id"] for r in select(store, where="seed=0")],
       "epochs": [m["epoch"] for m in store.open_run(rid).metrics()],
       "holder": store.lock_holder(rid)}
writes = {"create": lambda: store.create_run({"x": 1}),
          "set_status": lambda: store.set_status(rid, "failed"),
          "lock": lambda: store.lock(rid).__enter__(),
          "log": lambda: store.open_run(rid).log({"epoch": 9})}
for name, write in writes.items():
    try:
        write()
        out[name] = "written"
    except StoreError as e:
        out[name] = str(e)
print(json.dumps(out))
"""


def _make_store(root: Path) -> tuple[RunStore, str, str]:
    store = RunStore(root)
    rid = store.create_run({"seed": 0}, name="a").id
    other = store.create_run({"seed": 1}, name="b").id
    store.open_run(rid).log({"epoch": 1})
    store.set_status(rid, "done")
    return store, rid, other


def _check_reader(out: dict, root: Path, rid: str, other: str, denied: str) -> None:
    assert out["list"] == [other, rid] and out["status"] == "done"
    assert out["by_hash"] == [rid] and out["show"] == ["checkpoints", "config", "row",
                                                       "writer"]
    assert out["config"] == {"seed": 0} and out["select"] == [rid] and out["epochs"] == [1]
    assert out["holder"] is None
    ro = (f"run store {root / 'seqmem.db'} is read-only; commands that only read (seqmem "
          f"runs, show) work; to write, make {str(root)!r} writable or give another --root")
    assert out["create"] == ro and out["set_status"] == ro
    assert out["lock"] == (f"run store: cannot lock run {rid} at "
                           f"{str(root / rid / '.lock')!r}: {denied}")
    assert out["log"] == f"run store: cannot write {str(root / rid / 'metrics.jsonl')!r}: {denied}"


def test_a_store_another_user_may_not_write_is_read_and_refuses_writes_in_one_line():
    base = Path(tempfile.mkdtemp(prefix="seqmem-ro-"))  # a user other than root can enter
    try:
        base.chmod(0o755)
        root = base / "runs"
        store, rid, other = _make_store(root)
        if not IS_ROOT:  # as the owner: take the write bits away
            for p in [root, *root.rglob("*")]:
                p.chmod(0o555 if p.is_dir() else 0o444)
        r = subprocess.run([sys.executable, "-c", READER, str(root), rid], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        denied = "permission denied; make it writable by this user or give another --root"
        _check_reader(json.loads(r.stdout), root, rid, other, denied)
        assert not (root / "seqmem.db-wal").exists()  # nothing was set up
        assert store.get(rid)["status"] == "done"  # nor written
    finally:
        for p in [base, *base.rglob("*")]:
            with contextlib.suppress(OSError):
                p.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


class Tmpfs:
    """A small tmpfs mounted for one test (root only): a real read-only or full disk."""

    def __init__(self, path: Path, size: str):
        self.path = path
        path.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")

    def remount_read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)

    def fill(self) -> None:
        fd = os.open(self.path / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def unmount(self) -> None:
        subprocess.run(["umount", str(self.path)], check=False, capture_output=True)


@pytest.fixture
def tmpfs(tmp_path):
    if not IS_ROOT or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    fs = Tmpfs(tmp_path / "fs", "1m")
    yield fs
    fs.unmount()


def test_a_store_on_a_read_only_file_system_is_read_and_refuses_writes(tmpfs):
    root = tmpfs.path / "runs"
    _, rid, other = _make_store(root)
    assert not (root / "seqmem.db-shm").exists()  # no WAL files: read as an immutable file
    tmpfs.remount_read_only()
    r = subprocess.run([sys.executable, "-c", READER.replace("os.geteuid() == 0", "False"),
                        str(root), rid], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    _check_reader(json.loads(r.stdout), root, rid, other,
                  "the file system is read-only; give a writable --root")
    with pytest.raises(StoreError, match=r"^run store: cannot write .*summary\.json': the "
                                         r"file system is read-only; give a writable --root$"):
        Run(rid, root / rid).write_summary({"a": 1})
    with pytest.raises(StoreError, match=r"checkpoints/last.safetensors': the file system is "
                                         r"read-only"):
        Run(rid, root / rid).save_checkpoint("last", {"x": torch.ones(2)})


def test_readers_never_set_up_or_change_the_database(tmp_path, monkeypatch):
    root = tmp_path / "old"
    root.mkdir()
    with contextlib.closing(sqlite3.connect(root / "seqmem.db")) as con, con:
        con.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, status TEXT, created_at TEXT)")
        con.execute("INSERT INTO runs VALUES ('old-run', 'done', '2020-01-01T00:00:00')")
    before = (root / "seqmem.db").read_bytes()

    def no_setup(con):
        raise AssertionError("a reader set the schema up")

    monkeypatch.setattr("seqmem.store.db.ensure_schema", no_setup)
    store = RunStore(root)
    assert [r["id"] for r in store.list_runs()] == ["old-run"]
    row = store.get("old")
    assert row["status"] == "done" and row["kind"] is None and row["summary"] == {}
    assert store.find_by_hash("x") == [] and store.list_runs(kind="train") == []
    assert store.schema_version() is None
    assert (root / "seqmem.db").read_bytes() == before  # no migration, no WAL switch
    assert sorted(p.name for p in root.iterdir()) == ["seqmem.db"]
    with pytest.raises(AssertionError, match="a reader set the schema up"):
        store.set_status("old-run", "failed")  # a writer does


# ---- a corrupt, locked or misplaced index ---------------------------------------------------
def test_a_corrupt_index_is_one_line_naming_the_rebuild(tmp_path):
    store, rid, _ = _make_store(tmp_path)
    (tmp_path / "seqmem.db").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            (tmp_path / f"seqmem.db{suffix}").unlink()
    store = RunStore(tmp_path)
    expect = (f"run store {tmp_path / 'seqmem.db'} is not a SQLite database (corrupt?); "
              f"rebuild the index from the run folders with: seqmem store rebuild --root "
              f"{tmp_path}")
    for call in (store.list_runs, lambda: store.get(rid), lambda: store.find_by_hash("x"),
                 lambda: store.create_run({}), lambda: store.set_status(rid, "done"),
                 lambda: store.describe(rid), store.schema_version):
        with pytest.raises(StoreError) as info:
            call()
        assert _one_line(info.value) == expect


def test_cli_runs_and_show_on_a_corrupt_index_print_one_line(tmp_path):
    _, rid, _ = _make_store(tmp_path)
    (tmp_path / "seqmem.db").write_bytes(b"\0garbage" * 64)
    for args in (["runs"], ["show", rid]):
        r = subprocess.run([sys.executable, "-m", "seqmem.cli.main", *args, "--root",
                            str(tmp_path)], capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines() == [
            f"error: run store {tmp_path / 'seqmem.db'} is not a SQLite database (corrupt?); "
            f"rebuild the index from the run folders with: seqmem store rebuild --root "
            f"{tmp_path}"]


def test_a_database_held_by_another_writer_is_one_line(tmp_path, monkeypatch):
    store, rid, _ = _make_store(tmp_path)
    monkeypatch.setattr(schema_mod, "BUSY_MS", 50)
    with contextlib.closing(sqlite3.connect(tmp_path / "seqmem.db")) as other:
        other.execute("BEGIN IMMEDIATE")  # another process's write transaction
        with pytest.raises(StoreError) as info:
            store.set_status(rid, "failed")
        assert _one_line(info.value) == (
            f"run store {tmp_path / 'seqmem.db'}: cannot write (database is locked): another "
            f"process holds the database; wait for it to finish, or stop it, and try again")
        assert store.get(rid)["status"] == "done"  # readers are not blocked by it
        other.rollback()
    store.set_status(rid, "failed")


@pytest.mark.parametrize("message,name,expect", [
    ("database is locked", "SQLITE_BUSY", "cannot read (database is locked): another process"),
    ("disk I/O error", "SQLITE_IOERR_WRITE", "cannot read (disk I/O error); check the disk"),
    ("file is not a database", "SQLITE_NOTADB", "is not a SQLite database (corrupt?); rebuild"),
    ("attempt to write a readonly database", "SQLITE_READONLY",
     "is read-only; commands that only read (seqmem runs, show) work; to write"),
    ("database or disk is full", "SQLITE_FULL",
     "cannot read (database or disk is full); free some space"),
    ("unable to open database file", "SQLITE_CANTOPEN", "cannot be opened (unable to open"),
    ("database disk image is malformed", "SQLITE_CORRUPT", "is not a SQLite database"),
])
def test_every_sqlite_fault_is_one_line(message, name, expect):
    e = sqlite3.OperationalError(message)
    e.sqlite_errorname = name
    text = _one_line(db_error(e, "runs/seqmem.db", "runs", "read"))
    assert text.startswith("run store runs/seqmem.db") and expect in text


def test_a_root_that_is_a_file_is_one_line(tmp_path):
    f = tmp_path / "x"
    f.write_text("not a folder")
    store = RunStore(f)
    for call in (store.list_runs, lambda: store.create_run({}), lambda: store.get("a"),
                 store.check, store.rebuild):
        with pytest.raises(StoreError) as info:
            call()
        assert _one_line(info.value) == f"run store root {str(f)!r} is a file; give a folder"
    with pytest.raises(StoreError) as info:
        RunStore(f / "runs").create_run({})
    assert _one_line(info.value) == (f"run store root {str(f / 'runs')!r} cannot be made: "
                                     f"{str(f)!r} is a file; give a folder")


# ---- files of a run folder -------------------------------------------------------------------
def test_an_invalid_config_yaml_is_one_line_with_its_line_and_column(tmp_path):
    store = RunStore(tmp_path)
    rid = store.create_run({"seed": 0}).id
    path = tmp_path / rid / "config.yaml"
    path.write_text("seed: 0\nmodel:\n  d_model: 8\n  mixer: [gru\n")
    for call in (store.open_run(rid).config, lambda: store.describe(rid)):
        with pytest.raises(StoreError) as info:
            call()
        assert _one_line(info.value) == (
            f"run {rid}: {str(path)!r} is not valid YAML (expected ',' or ']', but got "
            f"'<stream end>' at line 5, column 1); fix the file or restore it (its hash is "
            f"config_hash in meta.json)")
    path.write_text("- a\n- b\n")
    with pytest.raises(StoreError, match=r"holds a YAML list, not a mapping"):
        store.open_run(rid).config()
    (tmp_path / rid / "meta.json").write_text('{"id": "x",\n "kind": }')
    with pytest.raises(StoreError) as info:
        store.open_run(rid).meta()
    assert _one_line(info.value) == (f"run store: {str(tmp_path / rid / 'meta.json')!r} is "
                                     f"not valid JSON (Expecting value at line 2, column 10); "
                                     f"restore or remove the file")


def test_a_full_disk_while_writing_is_one_line_and_keeps_the_old_files(tmp_path, monkeypatch):
    """Simulated: the writes fail with ENOSPC (the tmpfs test below fills a real disk)."""
    run = Run("r", tmp_path)
    run.write_summary({"acc": 0.5})
    run.save_checkpoint("last", {"x": torch.ones(2)})
    run.log({"epoch": 1})
    real_open = open

    def full(path, mode="r", *a, **kw):
        if any(c in mode for c in "wa+"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, mode, *a, **kw)

    def full_safetensors(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")

    monkeypatch.setattr(run_mod, "open", full, raising=False)
    monkeypatch.setattr(run_mod, "save_file", full_safetensors)
    tail = "no space left on the device; free some space or give another --root"
    for call, name in ((lambda: run.write_summary({"acc": 0.9}), "summary.json"),
                       (lambda: run.log({"epoch": 2}), "metrics.jsonl"),
                       (lambda: run.save_checkpoint("last", {"x": torch.zeros(2)}),
                        "checkpoints/last.safetensors")):
        with pytest.raises(StoreError) as info:
            call()
        assert _one_line(info.value) == f"run store: cannot write {str(tmp_path / name)!r}: {tail}"
    monkeypatch.undo()
    assert run.read_summary() == {"acc": 0.5} and [m["epoch"] for m in run.metrics()] == [1]
    assert torch.equal(run.load_checkpoint()["x"], torch.ones(2))
    assert sorted(p.name for p in run.ckpt_dir.iterdir()) == ["last.safetensors"]


def test_a_full_disk_is_one_line_before_and_during_a_run(tmpfs):
    root = tmpfs.path / "runs"
    store = RunStore(root)
    rid = store.create_run({"seed": 0}).id
    run = store.open_run(rid)
    run.save_checkpoint("last", {"x": torch.ones(4)})
    run.write_summary({"acc": 0.5})
    run.log({"epoch": 1})
    tmpfs.fill()
    space = "no space left on the device; free some space or give another --root"
    with pytest.raises(StoreError) as info:
        run.write_summary({"acc": 0.9})
    assert _one_line(info.value) == (f"run store: cannot write "
                                     f"{str(root / rid / 'summary.json')!r}: {space}")
    with pytest.raises(StoreError) as info:
        run.save_checkpoint("last", {"x": torch.zeros(4000)})
    assert _one_line(info.value) == (f"run store: cannot write "
                                     f"{str(root / rid / 'checkpoints' / 'last.safetensors')!r}"
                                     f": {space}")
    with pytest.raises(StoreError) as info:
        run.log({"epoch": 2, "pad": "x" * 8192})
    assert _one_line(info.value) == (f"run store: cannot write "
                                     f"{str(root / rid / 'metrics.jsonl')!r}: {space}")
    for call in (lambda: store.create_run({"seed": 1}),
                 lambda: store.update_summary(rid, {"big": "y" * 100_000})):
        with pytest.raises(StoreError) as info:
            call()
        assert re.match(r"^run store[ :].*(disk I/O error|database or disk is full|no space "
                        r"left on the device)", _one_line(info.value)), str(info.value)
    # the old files are whole, no folder was left half made, and reading works
    assert run.read_summary() == {"acc": 0.5} and [m["epoch"] for m in run.metrics()] == [1]
    assert torch.equal(run.load_checkpoint()["x"], torch.ones(4))
    assert [p.name for p in root.iterdir() if p.is_dir()] == [rid]
    assert [r["id"] for r in store.list_runs()] == [rid]
    (tmpfs.path / "filler").unlink()
    store.update_summary(rid, {"acc": 0.9})  # space again: it goes on
    assert store.get(rid)["summary"] == {"acc": 0.9}


# ---- check and rebuild ----------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _many_runs(root: Path) -> tuple[RunStore, dict[str, str]]:
    """Runs in every state a store holds, by label."""
    store = RunStore(root)
    ids = {}
    ids["done"] = store.create_run({"seed": 0, "model": {"d_model": 8}}, name="first").id
    run = store.open_run(ids["done"])
    for e in (1, 2):
        run.log({"epoch": e, "acc_mean": e / 4})
    run.write_summary({"epochs": 2, "acc_mean": 0.5, "stop_reason": "curriculum finished"})
    store.update_summary(ids["done"], {**run.read_summary(), "point": {"train.lr": 0.01}})
    store.set_status(ids["done"], "done")
    ids["failed"] = store.create_run({"seed": 1}, kind="sweep", name="s").id
    store.set_status(ids["failed"], "failed", "non-finite loss (nan) in epoch 3")
    ids["interrupted"] = store.create_run({"seed": 2}, kind="continual", name="c").id
    store.update_summary(ids["interrupted"], {"experience": 1})
    store.set_status(ids["interrupted"], "interrupted", "interrupted; resume with --resume")
    ids["killed"] = store.create_run({"seed": 3}).id  # its driver died: no end recorded
    store.heartbeat(ids["killed"], pid=_dead_pid())
    ids["writing"] = store.create_run({"seed": 4}).id  # written now, by this process
    ids["legacy_done"] = store.create_run({"seed": 5}).id  # folders of an older version
    store.open_run(ids["legacy_done"]).write_summary({"epochs": 4, "stop_reason": "max_epochs"})
    store.update_summary(ids["legacy_done"], {"epochs": 4, "stop_reason": "max_epochs"})
    store.set_status(ids["legacy_done"], "done")
    ids["legacy_cut"] = store.create_run({"seed": 6}).id
    store.open_run(ids["legacy_cut"]).write_summary({"epochs": 1, "stop_reason": None})
    store.update_summary(ids["legacy_cut"], {"epochs": 1, "stop_reason": None})
    for label in ("legacy_done", "legacy_cut"):
        (root / ids[label] / "row.json").unlink()
    return store, ids


def test_rebuild_recovers_the_rows_from_the_run_folders(tmp_path):
    store, ids = _many_runs(tmp_path)
    before = {r["id"]: r for r in store.stored_rows()}
    listed = [r["id"] for r in store.list_runs()]
    garbage = b"\x13\x37 not sqlite " * 500
    with store.open_run(ids["writing"]).lock():
        (tmp_path / "seqmem.db").write_bytes(garbage)
        with pytest.raises(StoreError, match="is not a SQLite database"):
            store.list_runs()
        report = store.rebuild()
        assert store.get(ids["writing"])["status"] == "running"
    assert Path(report.backup).read_bytes() == garbage  # the old file, kept whole
    assert Path(report.backup).name.startswith("seqmem.db.bak-")
    after = {r["id"]: r for r in store.stored_rows()}
    assert set(after) == set(before) and [r["id"] for r in store.list_runs()] == listed
    same = ("id", "name", "kind", "config_hash", "created_at", "summary")
    for rid in before:
        assert {c: after[rid][c] for c in same} == {c: before[rid][c] for c in same}, rid
        assert after[rid]["dir"] == str((tmp_path / rid).resolve())
    status = {k: (after[rid]["status"], after[rid]["reason"]) for k, rid in ids.items()}
    assert status == {
        "done": ("done", None), "failed": ("failed", "non-finite loss (nan) in epoch 3"),
        "interrupted": ("interrupted", "interrupted; resume with --resume"),
        "killed": ("interrupted", NO_END), "writing": ("running", None),
        "legacy_done": ("done", None), "legacy_cut": ("interrupted", NO_END)}
    assert json.loads(after[ids["done"]]["summary"])["point"] == {"train.lr": 0.01}
    assert report.line == (f"run store {tmp_path}: index rebuilt from 7 run folders (2 done, "
                           f"1 failed, 3 interrupted, 1 running); the old index is kept as "
                           f"{report.backup}")
    assert report.problems == []
    assert store.check().ok, store.check().line  # index and folders agree again
    store.set_status(ids["killed"], "done")  # and it is written as before
    again = store.rebuild()
    assert again.backup != report.backup and Path(report.backup).exists()
    assert store.get(ids["killed"])["status"] == "done"


def test_rebuild_keeps_the_old_index_and_its_wal_and_reads_what_it_can(tmp_path):
    store, ids = _many_runs(tmp_path)
    # a writer killed with rows only in the WAL: the backup keeps them
    code = ("import sqlite3, sys, os\ncon = sqlite3.connect(sys.argv[1])\n"
            "con.execute('PRAGMA wal_autocheckpoint = 0')\n"
            "con.execute(\"UPDATE runs SET name = 'renamed' WHERE id = ?\", (sys.argv[2],))\n"
            "con.commit()\nos._exit(0)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "seqmem.db"),
                        ids["legacy_cut"]], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "seqmem.db-wal").stat().st_size > 0
    (tmp_path / ids["failed"] / "summary.json").write_text("{cut")
    shutil.rmtree(tmp_path / ids["writing"])
    report = store.rebuild()
    with contextlib.closing(sqlite3.connect(f"file:{report.backup}?mode=ro", uri=True)) as con:
        names = dict(con.execute("SELECT id, name FROM runs"))
    assert names[ids["legacy_cut"]] == "renamed" and ids["writing"] in names
    assert [(p.kind, p.run_id) for p in report.problems] == [("unreadable", ids["failed"]),
                                                             ("no_folder", ids["writing"])]
    # a folder of an older version takes its summary from the old index
    assert store.get(ids["legacy_done"])["summary"] == {"epochs": 4,
                                                        "stop_reason": "max_epochs"}
    assert store.get(ids["failed"])["status"] == "failed"  # row.json still says so
    assert not list(tmp_path.glob("*.tmp*"))


def test_check_finds_each_kind_of_problem_and_rebuild_mends_the_index(tmp_path):
    store, ids = _many_runs(tmp_path)
    assert store.check().line == (f"run store {tmp_path}: 7 rows, 7 run folders; 1 problem "
                                  f"(1 stale run); resume the stale runs")  # the killed one
    shutil.rmtree(tmp_path / ids["writing"])  # a row without a folder
    stray = tmp_path / "20200101-000000-abcdef"  # a folder without a row
    stray.mkdir()
    (stray / "config.yaml").write_text("seed: 9\n")
    (tmp_path / "report-x").mkdir()  # not a run folder: ignored
    cfg = tmp_path / ids["done"] / "config.yaml"
    cfg.write_text(cfg.read_text().replace("seed: 0", "seed: 10"))
    store.set_status(ids["legacy_cut"], "done")  # done without a final summary
    (tmp_path / ids["failed"] / "checkpoints").mkdir()
    (tmp_path / ids["failed"] / "checkpoints" / "last.safetensors").write_bytes(b"\x08cut")
    (tmp_path / ids["interrupted"] / "metrics.jsonl").write_text(
        '{"experience": 0}\n{"experience": 1}\n{"experience": 1}\n')
    with contextlib.closing(sqlite3.connect(tmp_path / "seqmem.db")) as con, con:
        con.execute("UPDATE runs SET status = 'done' WHERE id = ?", (ids["failed"],))
    report = store.check()
    found = sorted((p.kind, p.run_id) for p in report.problems)
    assert found == sorted([
        ("no_folder", ids["writing"]), ("no_row", stray.name),
        ("config_hash", ids["done"]), ("config_hash", ids["done"]),  # the index and meta.json
        ("status", ids["legacy_cut"]), ("status", ids["failed"]),  # row.json says failed
        ("status", ids["failed"]),  # and it has no final summary
        ("unreadable", ids["failed"]), ("metrics", ids["interrupted"]),
        ("stale", ids["killed"])])
    assert not report.ok and report.n_rows == 7 and report.n_folders == 7
    assert report.line == (
        f"run store {tmp_path}: 7 rows, 7 run folders; 10 problems (1 row without a run "
        f"folder, 1 run folder without a row, 2 config hash mismatches, 3 status mismatches, "
        f"1 stale run, 1 unreadable file, 1 metrics file with an epoch twice); rebuild the "
        f"index from the run folders with: seqmem store rebuild --root {tmp_path}; restore or "
        f"remove the unreadable files; resume the stale runs")
    text = {(p.kind, p.run_id): str(p) for p in report.problems}
    new = config_hash({"seed": 10, "model": {"d_model": 8}})
    assert text["config_hash", ids["done"]].endswith(f"config.yaml hashes to {new}")
    assert "checkpoint 'last'" in text["unreadable", ids["failed"]]
    assert text["metrics", ids["interrupted"]].startswith(
        f"{ids['interrupted']}: metrics.jsonl logs experience 1 more than once")
    rebuilt = store.rebuild()
    assert store.get(stray.name)["config_hash"] == config_hash({"seed": 9})
    assert store.get(ids["done"])["config_hash"] == new
    assert store.get(ids["failed"])["status"] == "failed"
    left = sorted((p.kind, p.run_id) for p in store.check().problems)
    assert left == sorted([("config_hash", ids["done"]),  # meta.json is not rewritten
                           ("unreadable", ids["failed"]), ("metrics", ids["interrupted"]),
                           ("status", ids["legacy_cut"])])  # done by its row.json
    assert ("no_folder", ids["writing"]) in [(p.kind, p.run_id) for p in rebuilt.problems]


def test_check_of_a_corrupt_index_is_one_problem(tmp_path):
    store, _ = _many_runs(tmp_path)
    (tmp_path / "seqmem.db").write_bytes(b"garbage" * 300)
    report = store.check()
    assert [(p.kind, p.run_id) for p in report.problems] == [("index", None)]
    assert report.line == (f"run store {tmp_path}: 0 rows, 7 run folders; 1 problem (1 "
                           f"unreadable index); rebuild the index from the run folders with: "
                           f"seqmem store rebuild --root {tmp_path}")
    with pytest.raises(StoreError, match=r"^no run store at"):
        RunStore(tmp_path / "nowhere").check()


def test_the_folder_of_a_run_says_what_the_index_should(tmp_path):
    store, ids = _many_runs(tmp_path)
    f = read_folder(tmp_path / ids["done"])
    assert f.row["status"] == "done" and f.row["summary"]["point"] == {"train.lr": 0.01}
    assert f.config_hash == store.get(ids["done"])["config_hash"] and f.holder is None
    assert f.problems == []
