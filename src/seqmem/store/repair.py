"""The index against the run folders: `check` compares them, `rebuild` makes the index again
from the folders (the source of truth).

What a run folder says about its run (`read_folder`, `folder_status`):

- id: the folder's name; kind, name, created time, host: meta.json (written at creation);
- config hash: recomputed from config.yaml;
- status, reason and the index's summary: row.json, the copy of its row that the index's
  writer keeps in the folder (seqmem.store.db); a process holding the run's lock means
  "running" whatever the files say;
- where row.json is missing (a run of an older version) or still says running with nobody
  writing: a final summary.json (one whose "stop_reason" is set, or that has no such field,
  as a continual run's) means done; no recorded end means interrupted, with a reason that
  says so.

`rebuild` never deletes data: the old database (and its WAL files) is renamed to
`seqmem.db.bak-<UTC time>` before the new one takes its place, and the rows of the old index
that are still readable fill in what a folder of an older version lacks (its summary).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError, safe_open

from seqmem.errors import SeqmemError
from seqmem.store.faults import StoreError, db_error, os_error, rebuild_hint
from seqmem.store.lock import holder as lock_holder
from seqmem.store.lock import pid_alive
from seqmem.store.run import CKPT_SUFFIX, Run, read_json, read_records, slot
from seqmem.store.schema import (
    COLUMNS,
    DB_NAME,
    config_hash,
    connect_writer,
    ensure_schema,
    insert_row,
)

ROW_FILE = "row.json"
RUN_FILES = ("config.yaml", "meta.json", ROW_FILE)  # a folder with one of them is a run's
ENDED = ("done", "failed", "interrupted")
NO_END = ("no end was recorded in its folder (its process stopped: killed or crashed; found "
          "by seqmem store rebuild); resume it with --resume if it has a checkpoint 'last', "
          "else start it again")
# kind of problem -> (one, many) as the summary line counts them
PROBLEMS = {
    "index": ("unreadable index", "unreadable indexes"),
    "no_folder": ("row without a run folder", "rows without a run folder"),
    "no_row": ("run folder without a row", "run folders without a row"),
    "config_hash": ("config hash mismatch", "config hash mismatches"),
    "status": ("status mismatch", "status mismatches"),
    "stale": ("stale run", "stale runs"),
    "unreadable": ("unreadable file", "unreadable files"),
    "metrics": ("metrics file with an epoch twice", "metrics files with an epoch twice"),
}
REBUILD_FIXES = ("index", "no_folder", "no_row", "config_hash", "status")


@dataclass(frozen=True)
class Problem:
    """One finding: its kind (a key of PROBLEMS), the run (None for the whole store) and a
    one-line description."""

    kind: str
    run_id: str | None
    detail: str

    def __str__(self) -> str:
        return f"{self.run_id}: {self.detail}" if self.run_id else self.detail


def _count_text(problems: list[Problem]) -> str:
    counts = {k: sum(p.kind == k for p in problems) for k in PROBLEMS}
    return ", ".join(f"{n} {PROBLEMS[k][n != 1]}" for k, n in counts.items() if n)


@dataclass
class CheckReport:
    """What `check` found: the rows and run folders it compared and the problems, one line
    each (`str(problem)`); `line` is the one-line summary, `ok` whether nothing was found."""

    root: str
    n_rows: int
    n_folders: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.problems:
            out[p.kind] = out.get(p.kind, 0) + 1
        return out

    @property
    def line(self) -> str:
        head = f"run store {self.root}: {self.n_rows} rows, {self.n_folders} run folders"
        if self.ok:
            return f"{head}; no problems"
        n = len(self.problems)
        todo = [rebuild_hint(self.root)] if set(self.counts()) & set(REBUILD_FIXES) else []
        if "unreadable" in self.counts():
            todo.append("restore or remove the unreadable files")
        if "stale" in self.counts():
            todo.append("resume the stale runs")
        tail = f"; {'; '.join(todo)}" if todo else ""
        return f"{head}; {n} problem{'s' if n != 1 else ''} ({_count_text(self.problems)}){tail}"


@dataclass
class RebuildReport:
    """What `rebuild` wrote: the rows (as in row.json: columns, summary as a mapping), the
    backup of the old database (None if there was none), the problems met (folders left out
    or read in part, rows of the old index without a folder); `line` in one line."""

    root: str
    db_path: str
    backup: str | None
    rows: list[dict] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def line(self) -> str:
        by: dict[str, int] = {}
        for r in self.rows:
            by[r["status"]] = by.get(r["status"], 0) + 1
        n = len(self.rows)
        states = f" ({', '.join(f'{k} {s}' for s, k in sorted(by.items()))})" if by else ""
        kept = f"; the old index is kept as {self.backup}" if self.backup else ""
        found = (f"; {len(self.problems)} problem{'s' if len(self.problems) != 1 else ''} "
                 f"({_count_text(self.problems)})" if self.problems else "")
        return (f"run store {self.root}: index rebuilt from {n} run folder{'s' if n != 1 else ''}"
                f"{states}{kept}{found}")


# ---- what a folder says ----------------------------------------------------------------
def row_record(row: dict) -> dict:
    """A stored row as row.json holds it: its columns but the folder's path and the
    heartbeat, the summary as a mapping."""
    rec = {c: row.get(c) for c in COLUMNS if c not in ("dir", "heartbeat")}
    s = rec.get("summary")
    if isinstance(s, str):
        try:
            s = json.loads(s or "{}")
        except json.JSONDecodeError:
            s = {}
    rec["summary"] = s if isinstance(s, dict) else {}
    return rec


@dataclass
class Folder:
    """The evidence of one run folder (see the module docstring); `problems` are the files
    that could not be read."""

    id: str
    path: Path
    meta: dict | None = None
    row: dict | None = None
    config_hash: str | None = None
    summary: dict | None = None
    holder: dict | None = None
    changed_at: str | None = None
    problems: list[Problem] = field(default_factory=list)


def run_folders(root: Path) -> list[Path]:
    """The run folders under `root`: folders (not hidden) holding a config.yaml, meta.json
    or row.json; other folders (reports, benches) are not runs."""
    try:
        entries = sorted(root.iterdir())
    except OSError as e:
        raise os_error(e, root, "read the run store folder") from e
    return [p for p in entries if not p.name.startswith(".") and p.is_dir()
            and any((p / f).is_file() for f in RUN_FILES)]


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="microseconds")


def read_folder(path: Path) -> Folder:
    """What the run folder `path` holds (see the module docstring)."""
    f = Folder(path.name, path)
    run = Run(path.name, path)

    def attempt(read, what: str):
        try:
            return read()
        except SeqmemError as e:  # StoreError: a file that is not what it should be
            f.problems.append(Problem("unreadable", f.id, f"{what}: {e}"))
            return None

    f.meta = attempt(lambda: read_json(path / "meta.json"), "meta.json")
    f.row = attempt(lambda: read_json(path / ROW_FILE), ROW_FILE)
    f.summary = attempt(lambda: read_json(path / "summary.json"), "summary.json")
    if (path / "config.yaml").exists():
        cfg = attempt(run.config, "config.yaml")
        f.config_hash = config_hash(cfg) if cfg is not None else None
    else:
        f.problems.append(Problem("unreadable", f.id, "config.yaml: the run folder has none"))
    for tag in attempt(run.checkpoints, "checkpoints") or []:
        p = run.ckpt_dir / f"{tag}{CKPT_SUFFIX}"
        try:
            with safe_open(str(p), framework="pt", device="cpu") as st:
                st.metadata()
        except (SafetensorError, OSError, ValueError) as e:
            first = (str(e).splitlines() or [type(e).__name__])[0]
            f.problems.append(Problem("unreadable", f.id, f"checkpoint {tag!r} ({str(p)!r}) "
                                      f"cannot be read ({first}); resume from another "
                                      f"checkpoint or remove it"))
    twice = attempt(lambda: _logged_twice(path / "metrics.jsonl"), "metrics.jsonl") or []
    if twice:
        shown = ", ".join(f"{k} {v}" for k, v in twice[:5]) + (", ..." if len(twice) > 5 else "")
        f.problems.append(Problem("metrics", f.id, f"metrics.jsonl logs {shown} more than "
                                  f"once (written by an older version); reading keeps the "
                                  f"last of each"))
    f.holder = lock_holder(path)
    times = []
    for p in [path, *(path / n for n in ("metrics.jsonl", "summary.json", ROW_FILE))]:
        with contextlib.suppress(OSError):
            times.append(p.stat().st_mtime)
    f.changed_at = _iso(max(times)) if times else None
    return f


def _logged_twice(path: Path) -> list[tuple[str, str]]:
    """(key, value) of the epochs (or experiences) logged more than once in metrics.jsonl."""
    seen, twice = set(), []
    for rec in read_records(path):
        s = slot(rec)
        if s is None:
            continue
        if s in seen and s not in twice:
            twice.append(s)
        seen.add(s)
    return twice


def final_summary(summary: dict | None) -> bool:
    """Whether summary.json is a finished run's (see the module docstring)."""
    if not summary:
        return False
    return "stop_reason" not in summary or summary["stop_reason"] is not None


def folder_status(f: Folder) -> tuple[str, str | None, str]:
    """(status, reason, the evidence) of the run, as its folder says (see the module
    docstring)."""
    if f.holder is not None:
        return "running", None, f"pid {f.holder.get('pid')} holds its lock"
    rj = f.row or {}
    if rj.get("status") in ENDED:
        return rj["status"], rj.get("reason"), ROW_FILE
    if final_summary(f.summary):
        return "done", None, "a final summary.json"
    if (rj.get("status") == "running" and rj.get("host") == socket.gethostname()
            and pid_alive(rj.get("pid"))):  # its writer is alive, without a lock
        return "running", rj.get("reason"), f"its writer pid {rj.get('pid')} is alive"
    return "interrupted", NO_END, "no recorded end"


def recovered_row(f: Folder, old: dict | None) -> dict | None:
    """The row of the index for folder `f` (columns, summary as JSON text); `old` is its
    row in the old index if that could be read. None if nothing in it can be read."""
    meta, rj, old = f.meta or {}, f.row or {}, old or {}
    if not (f.meta or f.row or f.config_hash):
        return None
    status, reason, _ = folder_status(f)
    if f.row is not None:
        summary = rj.get("summary") or {}
    elif old.get("summary"):
        try:
            summary = json.loads(old["summary"])
        except (TypeError, json.JSONDecodeError):
            summary = f.summary or {}
    else:
        summary = f.summary or {}

    def first(key: str):
        return next((d[key] for d in (rj, meta, old) if d.get(key) is not None), None)

    who = f.holder if f.holder is not None else (rj if f.row is not None else meta)
    changed = rj.get("updated_at") or f.changed_at
    return {
        "id": f.id, "name": first("name"), "kind": first("kind"),
        "config_hash": f.config_hash or first("config_hash"),
        "status": status, "reason": reason,
        "created_at": first("created_at") or f.changed_at,
        "updated_at": changed, "heartbeat": changed,
        "pid": who.get("pid"), "host": who.get("host"),
        "dir": str(f.path.resolve()), "summary": json.dumps(summary, default=str),
    }


# ---- check ---------------------------------------------------------------------------------
def check(store) -> CheckReport:
    """Compare the index of `store` (a RunStore) with its run folders: rows without a folder,
    folders without a row, config hashes (index, meta.json, config.yaml), statuses (the
    index, row.json, the lock, the summary), stale runs and unreadable files. Reads only."""
    root = Path(store.root)
    if not store.check_root():
        raise StoreError(f"no run store at {str(root)!r} (no such folder); give the --root "
                         f"that holds the run folders")
    problems: list[Problem] = []
    index_ok = True
    try:
        stored = {r["id"]: r for r in store.stored_rows()}
        derived = {r["id"]: r for r in store.list_runs()}
    except StoreError as e:
        stored, derived, index_ok = {}, {}, False
        problems.append(Problem("index", None, str(e)))
    folders = {p.name: p for p in run_folders(root)}
    for rid, raw in stored.items():
        if rid in folders:
            continue
        elsewhere = raw.get("dir") and Path(raw["dir"]).is_dir()
        where = (f"its recorded folder {raw['dir']!r} is outside {str(root)!r}" if elsewhere
                 else f"no folder {str(root / rid)!r}")
        problems.append(Problem("no_folder", rid, f"a row of the index without a run folder "
                                f"({where}); a rebuild leaves it out (kept in the backup)"))
    for rid, path in folders.items():
        f = read_folder(path)
        problems += f.problems
        raw = stored.get(rid)
        if raw is None:
            if index_ok:  # an unreadable index is one problem, not one per folder
                problems.append(Problem("no_row", rid, "a run folder without a row in the index"))
            continue
        problems += _compare(f, raw, derived.get(rid) or {})
    return CheckReport(str(root), len(stored), len(folders), problems)


def _compare(f: Folder, raw: dict, row: dict) -> list[Problem]:
    out = []
    rid, h = f.id, f.config_hash
    if h is not None and raw.get("config_hash") != h:
        out.append(Problem("config_hash", rid, f"the index has config hash "
                           f"{raw.get('config_hash')} but config.yaml hashes to {h}"))
    if h is not None and f.meta and f.meta.get("config_hash") not in (None, h):
        out.append(Problem("config_hash", rid, f"meta.json records config hash "
                           f"{f.meta['config_hash']} but config.yaml hashes to {h}"))
    st = raw.get("status")
    if f.holder is not None:
        if st != "running":
            who = f"pid {f.holder.get('pid')} on host {f.holder.get('host')}"
            out.append(Problem("status", rid, f"the index says {st} but {who} is writing it"))
        return out
    if row.get("status") == "stale":
        out.append(Problem("stale", rid, f"the index says running but {row.get('reason')}; "
                           f"resume it with --resume"))
    said, _, evidence = folder_status(f)
    if st in ENDED and said != st:
        out.append(Problem("status", rid, f"the index says {st} but its folder says {said} "
                           f"({evidence})"))
    if st == "done" and not final_summary(f.summary):
        why = "has no summary.json" if not f.summary else "has no final summary.json"
        out.append(Problem("status", rid, f"the index says done but the run folder {why} "
                           f"(no stop_reason)"))
    return out


# ---- rebuild ---------------------------------------------------------------------------
def _remove_db_files(path: Path) -> None:
    """Remove a temporary database of our own and its WAL files."""
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _backup_path(db: Path) -> Path:
    stamp = f"{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"
    path, k = db.with_name(f"{db.name}.bak-{stamp}"), 1
    while path.exists():
        path, k = db.with_name(f"{db.name}.bak-{stamp}-{k}"), k + 1
    return path


def rebuild(store) -> RebuildReport:
    """Make the index of `store` (a RunStore) again from its run folders: one row per run
    folder (see `recovered_row`), written to a new database that replaces the old one once
    whole; the old one is renamed to `seqmem.db.bak-<time>`. Run it while nothing writes the
    store (a run being written keeps its lock and is recovered as running)."""
    root = Path(store.root)
    if not store.check_root():
        raise StoreError(f"no run store at {str(root)!r} (no such folder); give the --root "
                         f"that holds the run folders")
    db = root / DB_NAME
    try:
        old = {r["id"]: r for r in store.stored_rows()}
    except StoreError:  # a corrupt index: nothing to fill in from it
        old = {}
    problems: list[Problem] = []
    rows = []
    for path in run_folders(root):
        f = read_folder(path)
        problems += f.problems
        row = recovered_row(f, old.get(f.id))
        if row is None:
            problems.append(Problem("unreadable", f.id, "nothing in the run folder can be "
                                    "read (config.yaml, meta.json, row.json); left out"))
            continue
        rows.append(row)
    ids = {r["id"] for r in rows}
    problems += [Problem("no_folder", rid, f"a row of the old index without a run folder "
                         f"under {str(root)!r}; left out (it stays in the backup)")
                 for rid in old if rid not in ids]
    rows.sort(key=lambda r: (r["created_at"] or "", r["id"]))  # rowid order = creation order

    tmp = root / f"{DB_NAME}.rebuild-{os.getpid()}.tmp"
    _remove_db_files(tmp)
    try:
        con = connect_writer(tmp)
        try:
            ensure_schema(con)
            with con:
                for r in rows:
                    insert_row(con, r)
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            con.close()
    except sqlite3.Error as e:
        _remove_db_files(tmp)
        raise db_error(e, tmp, root, "write") from e
    except BaseException:
        _remove_db_files(tmp)
        raise
    backup = None
    try:
        if db.exists():
            backup = _backup_path(db)
            os.replace(db, backup)
            for suffix in ("-wal", "-shm"):
                if Path(f"{db}{suffix}").exists():
                    os.replace(f"{db}{suffix}", f"{backup}{suffix}")
        os.replace(tmp, db)
    except OSError as e:
        raise os_error(e, db, "replace the index") from e
    finally:
        for suffix in ("-wal", "-shm"):  # emptied by the checkpoint and the close
            with contextlib.suppress(FileNotFoundError):
                Path(f"{tmp}{suffix}").unlink()
    return RebuildReport(str(root), str(db), str(backup) if backup else None,
                         [row_record(r) for r in rows], problems)
