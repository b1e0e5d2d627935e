"""The run store: one SQLite database indexing run folders, their status and summaries.

    <root>/seqmem.db     table `runs` (one row per run) and table `schema_version`
    <root>/<id>/         the run's folder (seqmem.store.run)

One writer per database: only the driver process calls the writing methods (create_run,
set_status, update_summary, heartbeat); training workers write their own run folders (`Run`)
and report to the driver. Each call opens a short-lived connection (WAL journal, a busy
timeout), so readers such as `seqmem runs` never block the writer for long.

Status is what the driver last recorded: running, done, failed or interrupted. A row still
"running" whose process is gone (its pid is dead on this host) or whose heartbeat is older
than `stale_after_s` is reported as "stale" on reading; the row itself is left as it is.

The schema is versioned: newer code adds columns (never removes or renames them), so an
older database gains the missing columns when opened, and a newer one is used through the
columns this code knows.
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
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml

from seqmem.errors import SeqmemError
from seqmem.store.run import Run, atomic_write

STATUSES = ("running", "done", "failed", "interrupted")
DERIVED_STATUSES = (*STATUSES, "stale")
SCHEMA_VERSION = 1
DB_NAME = "seqmem.db"
# (name, SQL type) of every column of `runs`; new columns go at the end, nullable
COLUMN_TYPES = (
    ("id", "TEXT PRIMARY KEY"), ("name", "TEXT"), ("kind", "TEXT"), ("config_hash", "TEXT"),
    ("status", "TEXT NOT NULL DEFAULT 'running'"), ("reason", "TEXT"), ("created_at", "TEXT"),
    ("updated_at", "TEXT"), ("heartbeat", "TEXT"), ("pid", "INTEGER"), ("host", "TEXT"),
    ("dir", "TEXT"), ("summary", "TEXT"),
)
COLUMNS = tuple(name for name, _ in COLUMN_TYPES)
INDEXES = {"runs_status": "status", "runs_config_hash": "config_hash",
           "runs_created_at": "created_at", "runs_kind_name": "kind, name"}
SELECT = f"SELECT {', '.join(COLUMNS)} FROM runs"


def now() -> str:
    """The current UTC time as ISO-8601 with microseconds (sorts as text)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def config_hash(config: dict) -> str:
    """sha256 of the config as canonical JSON (keys sorted), first 12 hex digits."""
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def git_commit(cwd: str | Path | None = None) -> str | None:
    """HEAD of the git repository holding `cwd` (default: the working directory), or None
    where there is no git or no repository."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def pid_alive(pid: int | None) -> bool:
    """Whether process `pid` exists on this machine and is not a zombie."""
    if pid is None or pid <= 0:  # kill(0 or -n) would address process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:
        return False
    # an unreaped child still answers kill(0): read its state where /proc exists
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _parse_time(s: str | None) -> dt.datetime | None:
    try:
        t = dt.datetime.fromisoformat(s)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _check_run_id(run_id: str) -> str:
    bad = (not isinstance(run_id, str) or not run_id or run_id.startswith(".")
           or run_id == DB_NAME or any(c in run_id for c in "/\\\0%*?"))
    if bad:
        raise SeqmemError(f"run id {run_id!r} is not accepted; accepted: a plain folder name "
                          f"(no '/', no leading '.'), e.g. '20261123-201500-ab12cd'")
    return run_id


class RunStore:
    """Run folders under `root` and their index in `root/seqmem.db`.

    Nothing is created until the first write (create_run); reading an absent store finds
    no runs.
    """

    def __init__(self, root: str | Path = "runs", *, stale_after_s: float = 600.0):
        self.root = Path(root)
        self.db_path = self.root / DB_NAME
        self.stale_after_s = float(stale_after_s)
        self._schema_ok = False

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    # ---- connection and schema ----------------------------------------------------------
    @contextlib.contextmanager
    def _db(self, *, create: bool = False) -> Iterator[sqlite3.Connection | None]:
        """A connection in one transaction (committed on success), closed afterwards; None
        when the database does not exist and `create` is false."""
        if not self.db_path.exists():
            if not create:
                yield None
                return
            self.root.mkdir(parents=True, exist_ok=True)
            self._schema_ok = False
        con = sqlite3.connect(self.db_path, timeout=30)
        try:
            con.execute("PRAGMA busy_timeout = 30000")
            if not self._schema_ok:
                self._ensure_schema(con)
                self._schema_ok = True
            with con:
                yield con
        finally:
            con.close()

    @staticmethod
    def _ensure_schema(con: sqlite3.Connection) -> None:
        """Create the tables, add the columns an older version lacks, record the version."""
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("BEGIN IMMEDIATE")  # one process migrates at a time
        try:
            con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            cols = ", ".join(f"{n} {t}" for n, t in COLUMN_TYPES)
            con.execute(f"CREATE TABLE IF NOT EXISTS runs ({cols})")
            have = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
            for name, typ in COLUMN_TYPES:
                if name not in have:
                    typ = "TEXT" if "PRIMARY" in typ else typ  # cannot add a key later
                    con.execute(f"ALTER TABLE runs ADD COLUMN {name} {typ}")
            for index, col in INDEXES.items():
                con.execute(f"CREATE INDEX IF NOT EXISTS {index} ON runs({col})")
            row = con.execute("SELECT MAX(version) FROM schema_version").fetchone()
            if row[0] is None:
                con.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] < SCHEMA_VERSION:  # a newer version is left as it is
                con.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            con.commit()
        except BaseException:
            con.rollback()
            raise

    def schema_version(self) -> int | None:
        """The schema version recorded in the database (None if there is no database)."""
        with self._db() as con:
            if con is None:
                return None
            return con.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]

    # ---- writing (the driver only) ------------------------------------------------------
    def create_run(self, config: dict, *, kind: str = "train", name: str | None = None,
                   run_id: str | None = None) -> Run:
        """Create a run: its folder (config.yaml with the resolved config, meta.json) and its
        row, status running, owned by this process. The id is `YYYYmmdd-HHMMSS-xxxxxx`
        (UTC time and 6 random hex digits) unless `run_id` is given."""
        config = json.loads(json.dumps(config, default=str))  # plain data, as hashed
        h = config_hash(config)
        self.root.mkdir(parents=True, exist_ok=True)
        if run_id is not None:
            _check_run_id(run_id)
        with self._db(create=True) as con:
            assert con is not None
            for _ in range(100):
                stamp = dt.datetime.now(dt.timezone.utc)
                rid = run_id or f"{stamp:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
                taken = con.execute("SELECT 1 FROM runs WHERE id = ?", (rid,)).fetchone()
                if not taken and not (self.root / rid).exists():
                    break
                if run_id is not None:
                    raise SeqmemError(f"run id {run_id!r} is taken in {str(self.root)!r}; "
                                      f"accepted: a new id, or none for a generated one")
            run_dir = self.root / rid
            run_dir.mkdir(parents=True)
            t, host, pid = now(), socket.gethostname(), os.getpid()
            meta = {"id": rid, "kind": kind, "name": name, "config_hash": h, "created_at": t,
                    "git_commit": git_commit(), "host": host, "pid": pid,
                    "python": platform.python_version(), "torch": torch.__version__,
                    "platform": platform.platform()}
            try:
                atomic_write(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
                atomic_write(run_dir / "meta.json", json.dumps(meta, indent=1))
                con.execute(
                    f"INSERT INTO runs ({', '.join(COLUMNS)}) VALUES "
                    f"({', '.join('?' * len(COLUMNS))})",
                    (rid, name, kind, h, "running", None, t, t, t, pid, host,
                     str(run_dir.resolve()), "{}"),
                )
            except BaseException:
                for p in run_dir.iterdir():
                    p.unlink()
                run_dir.rmdir()
                raise
        return Run(rid, run_dir)

    def describe(self, run_id: str) -> dict:
        """A run's row, resolved config and checkpoints (`seqmem show`)."""
        run = self.open_run(run_id)
        return {"row": self.get(run.id), "config": run.config(), "checkpoints": run.checkpoints()}

    def update_config(self, run_id: str, config: dict) -> None:
        """Replace a run's resolved config (e.g. a resumed run's extended budget): config.yaml
        and meta.json are rewritten atomically and the row's config hash follows."""
        config = json.loads(json.dumps(config, default=str))
        run = self.open_run(run_id)
        h = config_hash(config)
        atomic_write(run.dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        meta = run.meta()
        if meta:
            atomic_write(run.dir / "meta.json", json.dumps({**meta, "config_hash": h}, indent=1))
        with self._db(create=True) as con:
            assert con is not None
            con.execute("UPDATE runs SET config_hash = ?, updated_at = ? WHERE id = ?",
                        (h, now(), run.id))

    def set_status(self, run_id: str, status: str, reason: str | None = None) -> None:
        """Record the run's status (running, done, failed, interrupted) and why."""
        if status not in STATUSES:
            raise SeqmemError(f"unknown run status {status!r}; accepted: {', '.join(STATUSES)}")
        t = now()
        with self._db() as con:
            rid = self._id(con, run_id)
            con.execute("UPDATE runs SET status = ?, reason = ?, updated_at = ?, heartbeat = ? "
                        "WHERE id = ?", (status, reason, t, t, rid))

    def update_summary(self, run_id: str, summary: dict) -> None:
        """Store the run's summary (JSON) and refresh its heartbeat."""
        blob = json.dumps(summary, default=str)
        t = now()
        with self._db() as con:
            rid = self._id(con, run_id)
            con.execute("UPDATE runs SET summary = ?, updated_at = ?, heartbeat = ? WHERE id = ?",
                        (blob, t, t, rid))

    def heartbeat(self, run_id: str, pid: int | None = None) -> None:
        """Refresh the run's heartbeat; with `pid`, the run is now owned by that process on
        this host (a resume, or a worker process)."""
        t = now()
        with self._db() as con:
            rid = self._id(con, run_id)
            if pid is None:
                con.execute("UPDATE runs SET heartbeat = ? WHERE id = ?", (t, rid))
            else:
                con.execute("UPDATE runs SET heartbeat = ?, pid = ?, host = ? WHERE id = ?",
                            (t, int(pid), socket.gethostname(), rid))

    # ---- reading ------------------------------------------------------------------------
    def _id(self, con: sqlite3.Connection | None, run_id: str) -> str:
        """The full id of `run_id`, an id or a unique prefix of one."""
        if con is None or not isinstance(run_id, str) or not run_id:
            where = "" if con is not None else f" (no store at {str(self.root)!r})"
            raise SeqmemError(f"unknown run {run_id!r}; see `seqmem runs`{where}")
        if con.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
            return run_id
        rows = [r[0] for r in con.execute(
            "SELECT id FROM runs WHERE substr(id, 1, ?) = ? ORDER BY id LIMIT 6",
            (len(run_id), run_id))]
        if len(rows) == 1:
            return rows[0]
        if not rows:
            raise SeqmemError(f"unknown run {run_id!r}; see `seqmem runs`")
        more = ", ..." if len(rows) > 5 else ""
        raise SeqmemError(f"run id prefix {run_id!r} is ambiguous; accepted: one of "
                          f"{', '.join(rows[:5])}{more}")

    def open_run(self, run_id: str) -> Run:
        """The folder of run `run_id` (an id or a unique prefix)."""
        row = self.get(run_id)
        return Run(row["id"], row["dir"])

    def _row(self, r: tuple) -> dict:
        row = dict(zip(COLUMNS, r, strict=True))
        try:
            row["summary"] = json.loads(row["summary"] or "{}")
        except json.JSONDecodeError:
            row["summary"] = {}
        # the folder under this root wins: the store may have been moved or copied
        here = self.root / row["id"]
        if here.is_dir() or not row["dir"]:
            row["dir"] = str(here)
        if row["status"] == "running":
            why = self._stale_reason(row)
            if why:
                row["status"] = "stale"
                row["reason"] = row["reason"] or why
        return row

    def _stale_reason(self, row: dict) -> str | None:
        if row["host"] == socket.gethostname() and not pid_alive(row["pid"]):
            return f"its process (pid {row['pid']}) is gone: killed or crashed"
        beat = _parse_time(row["heartbeat"])
        if beat is None:
            return "it has no heartbeat"
        age = (dt.datetime.now(dt.timezone.utc) - beat).total_seconds()
        if age > self.stale_after_s:
            return f"no heartbeat for {age:.0f} s"
        return None

    def get(self, run_id: str) -> dict:
        """The run's row: id, name, kind, config_hash, status (derived, see module doc),
        reason, created_at, updated_at, heartbeat, pid, host, dir, summary (a dict)."""
        with self._db() as con:
            rid = self._id(con, run_id)
            r = con.execute(f"{SELECT} WHERE id = ?", (rid,)).fetchone()
        return self._row(r)

    def list_runs(self, *, status: str | None = None, kind: str | None = None,
                  name: str | None = None, limit: int | None = None) -> list[dict]:
        """Rows of runs, newest first, optionally only one (derived) status, kind or name."""
        if status is not None and status not in DERIVED_STATUSES:
            raise SeqmemError(f"unknown run status {status!r}; accepted: "
                              f"{', '.join(DERIVED_STATUSES)}")
        if limit is not None and limit < 0:
            raise SeqmemError(f"limit must be >= 0, got {limit}")
        where, args = [], []
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if name is not None:
            where.append("name = ?")
            args.append(name)
        if status is not None:  # stale rows are stored as running
            where.append("status = ?")
            args.append("running" if status == "stale" else status)
        q = SELECT + (" WHERE " + " AND ".join(where) if where else "")
        q += " ORDER BY created_at DESC, rowid DESC"
        with self._db() as con:
            if con is None:
                return []
            raw = con.execute(q, args).fetchall()
        rows = [self._row(r) for r in raw]
        if status is not None:
            rows = [r for r in rows if r["status"] == status]
        return rows if limit is None else rows[:limit]

    def find_by_hash(self, config_hash: str) -> list[dict]:
        """Rows of runs whose config hashes to `config_hash`, newest first."""
        with self._db() as con:
            if con is None:
                return []
            raw = con.execute(f"{SELECT} WHERE config_hash = ? "
                              f"ORDER BY created_at DESC, rowid DESC", (config_hash,)).fetchall()
        return [self._row(r) for r in raw]
