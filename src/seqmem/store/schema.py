"""The index's schema and its connections: columns of `runs`, set-up for writers, read-only
opening for readers.

A writer's first connection creates the tables, adds the columns an older version lacks and
turns on the WAL journal, only where something is missing (so a store that is set up takes
no write lock to open). A reader never changes the file: it opens it read-only
(`mode=ro`), or, where not even the WAL's shared-memory file can be made (a read-only
folder or file system), as an immutable file; it reads the columns the file has and leaves
the others None, so an older database reads without a migration.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from pathlib import Path

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
BUSY_MS = 30000


def now() -> str:
    """The current UTC time as ISO-8601 with microseconds (sorts as text)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def config_hash(config: dict) -> str:
    """sha256 of the config as canonical JSON (keys sorted), first 12 hex digits."""
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---- writers ----------------------------------------------------------------------------
def connect_writer(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=BUSY_MS / 1000)
    con.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
    return con


def _schema_complete(con: sqlite3.Connection) -> bool:
    if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        return False
    if set(COLUMNS) - table_columns(con):
        return False
    names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    if set(INDEXES) - names or "schema_version" not in table_names(con):
        return False
    row = con.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return row[0] is not None and row[0] >= SCHEMA_VERSION


def ensure_schema(con: sqlite3.Connection) -> None:
    """Create the tables, add the columns an older version lacks, record the version, turn
    on the WAL journal; nothing is written when all of it is there."""
    if _schema_complete(con):
        return
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("BEGIN IMMEDIATE")  # one process migrates at a time
    try:
        con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        cols = ", ".join(f"{n} {t}" for n, t in COLUMN_TYPES)
        con.execute(f"CREATE TABLE IF NOT EXISTS runs ({cols})")
        have = table_columns(con)
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


def insert_row(con: sqlite3.Connection, row: dict) -> None:
    """Insert a row given as a mapping of columns (missing ones NULL)."""
    con.execute(f"INSERT INTO runs ({', '.join(COLUMNS)}) VALUES "
                f"({', '.join('?' * len(COLUMNS))})", tuple(row.get(c) for c in COLUMNS))


# ---- readers ----------------------------------------------------------------------------
def _may_not_write(e: sqlite3.OperationalError) -> bool:
    """Whether `e` says that a read-only opening could not make the WAL's files."""
    name = getattr(e, "sqlite_errorname", "") or ""
    low = str(e).lower()
    return (name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")) or "readonly" in low
            or "unable to open" in low)


def connect_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection to the database file `path` (see the module docstring)."""
    uri = Path(path).absolute().as_uri()
    for query in ("mode=ro", "immutable=1"):
        con = sqlite3.connect(f"{uri}?{query}", uri=True, timeout=BUSY_MS / 1000)
        try:
            con.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
            con.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
            return con
        except sqlite3.OperationalError as e:
            con.close()
            if query == "immutable=1" or not _may_not_write(e):
                raise
        except BaseException:
            con.close()
            raise
    raise AssertionError("unreachable")


def table_names(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def table_columns(con: sqlite3.Connection) -> set[str]:
    return {r[1] for r in con.execute("PRAGMA table_info(runs)")}


def select_rows(con: sqlite3.Connection, match: dict | None = None, *,
                prefix: tuple[str, int] | None = None,
                newest_first: bool = False) -> list[dict]:
    """Rows of `runs` whose columns equal `match` (and whose id starts with `prefix`:
    (text, at most this many rows)), as mappings of every column this code knows (None
    where the file lacks the column), newest first if asked; none where there is no table."""
    have = table_columns(con)
    if not have:
        return []
    where, args = [], []
    for col, value in (match or {}).items():
        if col not in have:  # an older file: the column is NULL everywhere
            if value is not None:
                return []
            continue
        where.append(f"{col} = ?")
        args.append(value)
    if prefix is not None:
        where.append("substr(id, 1, ?) = ?")
        args += [len(prefix[0]), prefix[0]]
    known = [c for c in COLUMNS if c in have]
    q = f"SELECT {', '.join(known)} FROM runs"
    if where:
        q += " WHERE " + " AND ".join(where)
    if newest_first:
        q += " ORDER BY " + ("created_at DESC, " if "created_at" in have else "") + "rowid DESC"
    elif prefix is not None:
        q += " ORDER BY id"
    if prefix is not None:
        q += f" LIMIT {int(prefix[1])}"
    return [{c: None for c in COLUMNS} | dict(zip(known, r, strict=True))
            for r in con.execute(q, args)]
