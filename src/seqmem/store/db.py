"""The run store: one SQLite database indexing run folders, their status and summaries.

    <root>/seqmem.db     table `runs` (one row per run) and table `schema_version`
    <root>/<id>/         the run's folder (seqmem.store.run)

One writer per database: only the driver process calls the writing methods (create_run,
set_status, update_summary, heartbeat, update_config, rebuild); training workers write
their own run folders (`Run`), each under the run's lock (`RunStore.lock`, `Run.lock`), and
report to the driver. Each call opens a short-lived connection (WAL journal, a busy
timeout), so readers such as `seqmem runs` never block the writer for long. Readers open
the database read-only and never set anything up, so a read-only store (a read-only mount,
a folder of another user) can be listed and shown.

Status is what the driver last recorded: running, done, failed or interrupted. A row still
"running" whose process is gone (its pid is dead on this host) or whose heartbeat is older
than `stale_after_s`, and whose run lock no process holds, is reported as "stale" on
reading; the row itself is left as it is.

The folders are the source of truth: every write of a row's status, summary or config hash
is mirrored, in the same transaction, into the run's `row.json`, so that `rebuild` can make
the index again from the folders alone; `check` compares the two.

The schema is versioned: newer code adds columns (never removes or renames them), so an
older database gains the missing columns when next written, and a newer one is used through
the columns this code knows.

Every fault of the store's files is a one-line `StoreError` (seqmem.store.faults).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
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
from seqmem.store import repair
from seqmem.store.faults import RunLocked, StoreError, db_error, os_error, read_only
from seqmem.store.lock import holder as lock_holder
from seqmem.store.lock import pid_alive
from seqmem.store.run import Run, atomic_write
from seqmem.store.schema import (
    COLUMN_TYPES,
    COLUMNS,
    DB_NAME,
    INDEXES,
    SCHEMA_VERSION,
    config_hash,
    connect_reader,
    connect_writer,
    ensure_schema,
    insert_row,
    now,
    select_rows,
)

__all__ = ["COLUMNS", "COLUMN_TYPES", "DB_NAME", "DERIVED_STATUSES", "INDEXES", "ROW_FILE",
           "SCHEMA_VERSION", "STATUSES", "RunStore", "config_hash", "git_commit", "now",
           "pid_alive"]

STATUSES = ("running", "done", "failed", "interrupted")
DERIVED_STATUSES = (*STATUSES, "stale")
ROW_FILE = repair.ROW_FILE


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

    # ---- the root, connections and schema -----------------------------------------------
    def check_root(self) -> bool:
        """Whether the store's folder exists; a root that is a file is a StoreError."""
        try:
            if not self.root.exists():
                return False
            if self.root.is_dir():
                return True
        except OSError as e:
            raise os_error(e, self.root, "read the run store folder") from e
        raise StoreError(f"run store root {str(self.root)!r} is a file; give a folder")

    def _make_root(self) -> None:
        if self.check_root():
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTDIR):
                up = next((p for p in self.root.parents if p.exists() and not p.is_dir()), None)
                if up is not None:
                    raise StoreError(f"run store root {str(self.root)!r} cannot be made: "
                                     f"{str(up)!r} is a file; give a folder") from e
            raise os_error(e, self.root, "create the run store folder") from e

    def _db_exists(self) -> bool:
        if not self.check_root():
            return False
        try:
            return self.db_path.exists()
        except OSError as e:
            raise os_error(e, self.db_path, "read") from e

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection | None]:
        """A read-only connection (see seqmem.store.schema), closed afterwards; None when
        there is no database."""
        if not self._db_exists():
            yield None
            return
        try:
            con = connect_reader(self.db_path)
        except sqlite3.Error as e:
            raise db_error(e, self.db_path, self.root, "read") from e
        try:
            yield con
        except sqlite3.Error as e:
            raise db_error(e, self.db_path, self.root, "read") from e
        finally:
            con.close()

    @contextlib.contextmanager
    def _write(self, *, create: bool = False) -> Iterator[sqlite3.Connection | None]:
        """A connection in one transaction (committed on success), closed afterwards; None
        when the database does not exist and `create` is false. The schema is set up on the
        first connection of this store object."""
        if not self._db_exists():
            if not create:
                yield None
                return
            self._make_root()
            self._schema_ok = False
        try:
            con = connect_writer(self.db_path)
        except sqlite3.Error as e:
            raise db_error(e, self.db_path, self.root, "write") from e
        try:
            if not self._schema_ok:
                ensure_schema(con)
                self._schema_ok = True
            with con:
                yield con
        except sqlite3.Error as e:
            if not self._writable():  # sqlite says "unable to open" on a read-only mount
                raise read_only(self.db_path, self.root) from e
            raise db_error(e, self.db_path, self.root, "write") from e
        finally:
            con.close()

    def _writable(self) -> bool:
        paths = [self.root] + [p for p in (self.db_path,) if p.exists()]
        return all(os.access(p, os.W_OK) for p in paths)

    def schema_version(self) -> int | None:
        """The schema version recorded in the database (None if there is no database or it
        records none)."""
        with self._read() as con:
            if con is None or not con.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone():
                return None
            return con.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]

    def _mirror(self, con: sqlite3.Connection, rid: str) -> None:
        """Write the row of `rid`, as stored, into its folder's row.json (see the module
        docstring); a run without a folder here has nothing to mirror into."""
        rows = select_rows(con, {"id": rid})
        folder = self.root / rid
        if rows and folder.is_dir():
            atomic_write(folder / ROW_FILE, json.dumps(repair.row_record(rows[0]), indent=1))

    # ---- writing (the driver only) ------------------------------------------------------
    def create_run(self, config: dict, *, kind: str = "train", name: str | None = None,
                   run_id: str | None = None) -> Run:
        """Create a run: its folder (config.yaml with the resolved config, meta.json) and its
        row, status running, owned by this process. The id is `YYYYmmdd-HHMMSS-xxxxxx`
        (UTC time and 6 random hex digits) unless `run_id` is given."""
        config = json.loads(json.dumps(config, default=str))  # plain data, as hashed
        h = config_hash(config)
        if run_id is not None:
            _check_run_id(run_id)
        self._make_root()
        with self._write(create=True) as con:
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
            try:
                run_dir.mkdir(parents=True)
            except OSError as e:
                raise os_error(e, run_dir, "create the run folder") from e
            t, host, pid = now(), socket.gethostname(), os.getpid()
            meta = {"id": rid, "kind": kind, "name": name, "config_hash": h, "created_at": t,
                    "git_commit": git_commit(), "host": host, "pid": pid,
                    "python": platform.python_version(), "torch": torch.__version__,
                    "platform": platform.platform()}
            try:
                atomic_write(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
                atomic_write(run_dir / "meta.json", json.dumps(meta, indent=1))
                insert_row(con, {"id": rid, "name": name, "kind": kind, "config_hash": h,
                                 "status": "running", "created_at": t, "updated_at": t,
                                 "heartbeat": t, "pid": pid, "host": host,
                                 "dir": str(run_dir.resolve()), "summary": "{}"})
                self._mirror(con, rid)
                con.commit()  # here, so that a full disk leaves no folder without its row
            except BaseException:
                with contextlib.suppress(OSError):
                    for p in run_dir.iterdir():
                        p.unlink()
                    run_dir.rmdir()
                raise
        return Run(rid, run_dir)

    def describe(self, run_id: str) -> dict:
        """A run's row, resolved config, checkpoints and the process writing it now, if any
        (`seqmem show`)."""
        run = self.open_run(run_id)
        return {"row": self.get(run.id), "config": run.config(), "checkpoints": run.checkpoints(),
                "writer": run.lock_holder()}

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
        with self._write(create=True) as con:
            assert con is not None
            con.execute("UPDATE runs SET config_hash = ?, updated_at = ? WHERE id = ?",
                        (h, now(), run.id))
            self._mirror(con, run.id)

    def set_status(self, run_id: str, status: str, reason: str | None = None) -> None:
        """Record the run's status (running, done, failed, interrupted) and why."""
        if status not in STATUSES:
            raise SeqmemError(f"unknown run status {status!r}; accepted: {', '.join(STATUSES)}")
        t = now()
        with self._write() as con:
            rid = self._id(con, run_id)
            con.execute("UPDATE runs SET status = ?, reason = ?, updated_at = ?, heartbeat = ? "
                        "WHERE id = ?", (status, reason, t, t, rid))
            self._mirror(con, rid)

    def update_summary(self, run_id: str, summary: dict) -> None:
        """Store the run's summary (JSON) and refresh its heartbeat."""
        blob = json.dumps(summary, default=str)
        t = now()
        with self._write() as con:
            rid = self._id(con, run_id)
            con.execute("UPDATE runs SET summary = ?, updated_at = ?, heartbeat = ? WHERE id = ?",
                        (blob, t, t, rid))
            self._mirror(con, rid)

    def heartbeat(self, run_id: str, pid: int | None = None) -> None:
        """Refresh the run's heartbeat; with `pid`, the run is now owned by that process on
        this host (a resume, or a worker process)."""
        t = now()
        with self._write() as con:
            rid = self._id(con, run_id)
            if pid is None:
                con.execute("UPDATE runs SET heartbeat = ? WHERE id = ?", (t, rid))
            else:
                con.execute("UPDATE runs SET heartbeat = ?, pid = ?, host = ? WHERE id = ?",
                            (t, int(pid), socket.gethostname(), rid))
                self._mirror(con, rid)

    # ---- the run lock -----------------------------------------------------------------
    def lock(self, run_id: str):
        """A context manager holding the exclusive lock of run `run_id` (an id or a unique
        prefix) for the process that writes it; see `Run.lock`. Raises RunLocked naming the
        process that holds it."""
        return self.open_run(run_id).lock()

    def lock_holder(self, run_id: str) -> dict | None:
        """The process writing run `run_id` now (run, pid, host, since: what it wrote into
        the lock), or None when none does. Never raises: an unknown run or an unreadable
        index reads as not held (the folder root/<run_id> is still looked at)."""
        try:
            run = self.open_run(run_id)
        except SeqmemError:
            try:
                run = Run(_check_run_id(run_id), self.root / run_id)
            except SeqmemError:
                return None
        return run.lock_holder()

    def require_unlocked(self, run_id: str) -> None:
        """Raise RunLocked if a process other than this one holds the run's lock (call it
        before recording a resumed run as running)."""
        h = self.lock_holder(run_id)
        if h is not None and not (h.get("pid") == os.getpid()
                                  and h.get("host") == socket.gethostname()):
            raise RunLocked(h.get("run") or run_id, h)

    # ---- the index against the folders -----------------------------------------------
    def check(self) -> repair.CheckReport:
        """Verify the index against the run folders (see seqmem.store.repair.check): rows
        without a folder, folders without a row, config hashes, statuses, unreadable files;
        a structured report with a one-line `line`. Reads only."""
        return repair.check(self)

    def rebuild(self) -> repair.RebuildReport:
        """Make the index again from the run folders (see seqmem.store.repair.rebuild); the
        old database is kept beside it as `seqmem.db.bak-<time>`."""
        report = repair.rebuild(self)
        self._schema_ok = False
        return report

    # ---- reading ------------------------------------------------------------------------
    def stored_rows(self) -> list[dict]:
        """Every row as stored (status not derived, summary as JSON text), oldest first;
        none where there is no database."""
        with self._read() as con:
            return [] if con is None else select_rows(con)

    def _id(self, con: sqlite3.Connection | None, run_id: str) -> str:
        """The full id of `run_id`, an id or a unique prefix of one."""
        if con is None or not isinstance(run_id, str) or not run_id:
            where = "" if con is not None else f" (no store at {str(self.root)!r})"
            raise SeqmemError(f"unknown run {run_id!r}; see `seqmem runs`{where}")
        if select_rows(con, {"id": run_id}):
            return run_id
        rows = [r["id"] for r in select_rows(con, prefix=(run_id, 6))]
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

    def _row(self, raw: dict) -> dict:
        row = dict(raw)
        try:
            row["summary"] = json.loads(row["summary"] or "{}")
        except json.JSONDecodeError:
            row["summary"] = {}
        if not isinstance(row["summary"], dict):
            row["summary"] = {}
        # the folder under this root wins: the store may have been moved or copied
        here = self.root / row["id"]
        if here.is_dir() or not row["dir"]:
            row["dir"] = str(here)
        if row["status"] == "running":
            why = self._stale_reason(row)
            if why and lock_holder(row["dir"]) is None:  # a process holding its lock writes it
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
        with self._read() as con:
            rid = self._id(con, run_id)
            raw = select_rows(con, {"id": rid})[0]
        return self._row(raw)

    def list_runs(self, *, status: str | None = None, kind: str | None = None,
                  name: str | None = None, limit: int | None = None) -> list[dict]:
        """Rows of runs, newest first, optionally only one (derived) status, kind or name."""
        if status is not None and status not in DERIVED_STATUSES:
            raise SeqmemError(f"unknown run status {status!r}; accepted: "
                              f"{', '.join(DERIVED_STATUSES)}")
        if limit is not None and limit < 0:
            raise SeqmemError(f"limit must be >= 0, got {limit}")
        match = {}
        if kind is not None:
            match["kind"] = kind
        if name is not None:
            match["name"] = name
        if status is not None:  # stale rows are stored as running
            match["status"] = "running" if status == "stale" else status
        with self._read() as con:
            if con is None:
                return []
            raw = select_rows(con, match, newest_first=True)
        rows = [self._row(r) for r in raw]
        if status is not None:
            rows = [r for r in rows if r["status"] == status]
        return rows if limit is None else rows[:limit]

    def find_by_hash(self, config_hash: str) -> list[dict]:
        """Rows of runs whose config hashes to `config_hash`, newest first."""
        with self._read() as con:
            if con is None:
                return []
            raw = select_rows(con, {"config_hash": config_hash}, newest_first=True)
        return [self._row(r) for r in raw]
