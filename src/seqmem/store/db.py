"""The run store: one SQLite database indexing run folders, their status and summaries.

One writer per database: only the driver process calls the writing methods; training
workers write their own run folders (`Run`) and report to the driver.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import socket
import sqlite3
import subprocess
import uuid
from pathlib import Path

import yaml

from seqmem.errors import SeqmemError
from seqmem.store.run import Run, atomic_write

STATUSES = ("running", "done", "failed", "interrupted")
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, name TEXT, kind TEXT, config_hash TEXT, status TEXT NOT NULL,
    reason TEXT, created_at TEXT, updated_at TEXT, heartbeat TEXT, pid INTEGER, host TEXT,
    dir TEXT, summary TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE INDEX IF NOT EXISTS runs_hash ON runs(config_hash);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at);
"""
COLUMNS = ("id", "name", "kind", "config_hash", "status", "reason", "created_at", "updated_at",
           "heartbeat", "pid", "host", "dir", "summary")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def config_hash(config: dict) -> str:
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0): look at its state where /proc exists
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


class RunStore:
    """Run folders under `root` and their index in `root/seqmem.db`."""

    def __init__(self, root: str | Path = "runs", *, stale_after_s: float = 600.0):
        self.root = Path(root)
        self.db_path = self.root / "seqmem.db"
        self.stale_after_s = stale_after_s

    @contextlib.contextmanager
    def _db(self):
        self.root.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.db_path, timeout=30)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)
            if con.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 0:
                con.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            with con:
                yield con
        finally:
            con.close()

    # ---- writing (the driver only) ----------------------------------------------------
    def create_run(self, config: dict, *, kind: str = "train", name: str | None = None,
                   run_id: str | None = None) -> Run:
        """Create the run's folder (config.yaml, meta.json) and its row, status running."""
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_id = run_id or f"{stamp}-{uuid.uuid4().hex[:6]}"
        run_dir = self.root / run_id
        run_dir.mkdir(parents=True, exist_ok=False)
        h = config_hash(config)
        t = now()
        atomic_write(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        meta = {"id": run_id, "kind": kind, "name": name, "config_hash": h, "created_at": t,
                "git_commit": git_commit(), "host": socket.gethostname(), "pid": os.getpid(),
                "python": platform.python_version(), "platform": platform.platform()}
        with contextlib.suppress(ImportError):
            import torch

            meta["torch"] = torch.__version__
        atomic_write(run_dir / "meta.json", json.dumps(meta, indent=1))
        with self._db() as con:
            con.execute(
                "INSERT INTO runs (id, name, kind, config_hash, status, created_at, updated_at, "
                "heartbeat, pid, host, dir, summary) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, name, kind, h, "running", t, t, t, os.getpid(), socket.gethostname(),
                 str(run_dir), "{}"),
            )
        return Run(run_id, run_dir)

    def set_status(self, run_id: str, status: str, reason: str | None = None) -> None:
        if status not in STATUSES:
            raise SeqmemError(f"unknown run status {status!r}; accepted: {', '.join(STATUSES)}")
        with self._db() as con:
            con.execute("UPDATE runs SET status=?, reason=?, updated_at=?, heartbeat=? "
                        "WHERE id=?", (status, reason, now(), now(), self._id(con, run_id)))

    def update_summary(self, run_id: str, summary: dict) -> None:
        with self._db() as con:
            con.execute("UPDATE runs SET summary=?, updated_at=?, heartbeat=? WHERE id=?",
                        (json.dumps(summary, default=str), now(), now(),
                         self._id(con, run_id)))

    def heartbeat(self, run_id: str, pid: int | None = None) -> None:
        with self._db() as con:
            rid = self._id(con, run_id)
            if pid is not None:
                con.execute("UPDATE runs SET heartbeat=?, pid=?, host=? WHERE id=?",
                            (now(), pid, socket.gethostname(), rid))
            else:
                con.execute("UPDATE runs SET heartbeat=? WHERE id=?", (now(), rid))

    # ---- reading ----------------------------------------------------------------------
    def _id(self, con, run_id: str) -> str:
        rows = con.execute("SELECT id FROM runs WHERE id LIKE ? ORDER BY id",
                           (run_id.replace("%", "") + "%",)).fetchall()
        exact = [r[0] for r in rows if r[0] == run_id]
        if exact:
            return exact[0]
        if len(rows) == 1:
            return rows[0][0]
        if not rows:
            raise SeqmemError(f"unknown run {run_id!r}; see `seqmem runs`")
        raise SeqmemError(f"run id prefix {run_id!r} is ambiguous: "
                          f"{', '.join(r[0] for r in rows[:5])}")

    def open_run(self, run_id: str) -> Run:
        if not self.db_path.exists():
            raise SeqmemError(f"unknown run {run_id!r}; see `seqmem runs` (no store at "
                              f"{str(self.root)!r})")
        with self._db() as con:
            rid = self._id(con, run_id)
            d = con.execute("SELECT dir FROM runs WHERE id=?", (rid,)).fetchone()[0]
        return Run(rid, d)

    def _row(self, r) -> dict:
        row = dict(zip(COLUMNS, r, strict=True))
        row["summary"] = json.loads(row["summary"] or "{}")
        if row["status"] == "running" and self._stale(row):
            row["status"] = "stale"
            row["reason"] = row["reason"] or "the training process is gone (killed?)"
        return row

    def _stale(self, row: dict) -> bool:
        if row["host"] == socket.gethostname() and not pid_alive(row["pid"]):
            return True
        try:
            beat = dt.datetime.fromisoformat(row["heartbeat"])
        except (TypeError, ValueError):
            return True
        age = (dt.datetime.now(dt.timezone.utc) - beat).total_seconds()
        return age > self.stale_after_s

    def get(self, run_id: str) -> dict:
        with self._db() as con:
            rid = self._id(con, run_id)
            r = con.execute(f"SELECT {', '.join(COLUMNS)} FROM runs WHERE id=?",
                            (rid,)).fetchone()
        return self._row(r)

    def list_runs(self, *, status: str | None = None, kind: str | None = None,
                  limit: int | None = None) -> list[dict]:
        """Runs, newest first; a running run whose process is gone is reported as stale."""
        if not self.db_path.exists():
            return []
        q = f"SELECT {', '.join(COLUMNS)} FROM runs"
        where, args = [], []
        if kind:
            where.append("kind=?")
            args.append(kind)
        if status and status != "stale":
            where.append("status=?")
            args.append(status)
        if where:
            q += " WHERE " + " AND ".join(where)
        q += " ORDER BY created_at DESC, id DESC"
        with self._db() as con:
            rows = [self._row(r) for r in con.execute(q, args).fetchall()]
        if status:
            rows = [r for r in rows if r["status"] == status]
        return rows[:limit] if limit else rows

    def find_by_hash(self, h: str) -> list[dict]:
        with self._db() as con:
            rows = con.execute(f"SELECT {', '.join(COLUMNS)} FROM runs WHERE config_hash=? "
                               f"ORDER BY created_at DESC", (h,)).fetchall()
        return [self._row(r) for r in rows]

