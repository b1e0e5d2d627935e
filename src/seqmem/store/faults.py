"""What the run store raises when its files fail it, each as one line.

Every fault of the store's own files (the SQLite index, a run folder's files, the run lock)
becomes a `StoreError` naming the path, what failed and what to do: a read-only or full
disk, a corrupt database, a database held locked by another process, a file that is not
what it should be. `RunLocked` says which process is writing a run.

`os_error` and `db_error` translate an OSError and a sqlite3.Error; `file_error` the error
of a library that writes files for us (safetensors reports the OS error in its message).
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
import sqlite3
from pathlib import Path

from seqmem.errors import SeqmemError


class StoreError(SeqmemError):
    """A file of the run store cannot be read or written (one line: the path, what failed,
    what to do)."""


class RunLocked(StoreError):
    """Another process holds the run's lock: it is writing the run. `holder` is what it
    wrote into the lock file (run, pid, host, since; values None when unknown)."""

    def __init__(self, run_id: str, holder: dict):
        self.run_id, self.holder = run_id, dict(holder)
        pid, host = holder.get("pid"), holder.get("host")
        if pid is None:
            who = "another process"
        else:
            who = f"pid {pid}" + (f" on host {host}" if host else "")
        since = since_text(holder.get("since"))
        super().__init__(f"run {run_id} is being written by {who}"
                         f"{f' since {since}' if since else ''}; wait for it or stop it")


def since_text(iso: str | None) -> str | None:
    """An ISO time as local wall-clock time: HH:MM:SS today, else with its date."""
    try:
        t = dt.datetime.fromisoformat(iso)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    t = t.astimezone()
    return f"{t:%H:%M:%S}" if t.date() == dt.datetime.now().astimezone().date() \
        else f"{t:%Y-%m-%d %H:%M:%S}"


def rebuild_hint(root: str | Path) -> str:
    return f"rebuild the index from the run folders with: seqmem store rebuild --root {root}"


def os_error(e: OSError, path: str | Path, action: str) -> StoreError:
    """`e`, raised while `action`-ing `path` ("write", "read", "lock", ...), as one line."""
    code = e.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        why, todo = "no space left on the device", "free some space or give another --root"
    elif code == errno.EROFS:
        why, todo = "the file system is read-only", "give a writable --root"
    elif code in (errno.EACCES, errno.EPERM):
        why, todo = "permission denied", "make it writable by this user or give another --root"
    elif code == errno.ENOENT:
        why, todo = "no such file or folder", "check the run store's --root"
    elif code == errno.ENOTDIR:
        why, todo = "a part of the path is a file", "give a folder as --root"
    else:
        why = e.strerror or str(e) or type(e).__name__
        todo = "check the disk and the file, then try again"
    return StoreError(f"run store: cannot {action} {str(path)!r}: {why}; {todo}")


def file_error(e: Exception, path: str | Path, action: str) -> StoreError:
    """An error a file-writing library raised, as one line; an OS error code in its message
    ("(os error 28)") is read as that OSError."""
    if isinstance(e, OSError):
        return os_error(e, path, action)
    m = re.search(r"os error (\d+)", str(e))
    if m:
        code = int(m.group(1))
        return os_error(OSError(code, os.strerror(code)), path, action)
    first = (str(e).splitlines() or [type(e).__name__])[0]
    return StoreError(f"run store: cannot {action} {str(path)!r}: {first}; check the disk and "
                      f"the file, then try again")


def read_only(db_path: str | Path, root: str | Path) -> StoreError:
    """The index cannot be written: a read-only folder, file or file system."""
    return StoreError(f"run store {db_path} is read-only; commands that only read (seqmem runs, "
                      f"show) work; to write, make {str(root)!r} writable or give another "
                      f"--root")


def db_error(e: sqlite3.Error, db_path: str | Path, root: str | Path, action: str) -> StoreError:
    """A sqlite3 error raised while `action`-ing the index (read, write) as one line."""
    name = getattr(e, "sqlite_errorname", "") or ""
    msg = str(e)
    low = msg.lower()
    db = str(db_path)
    if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT") or "not a database" in low \
            or "malformed" in low:
        return StoreError(f"run store {db} is not a SQLite database (corrupt?); "
                          f"{rebuild_hint(root)}")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in low:
        return StoreError(f"run store {db}: cannot {action} ({msg}): another process holds "
                          f"the database; wait for it to finish, or stop it, and try again")
    if name.startswith("SQLITE_READONLY") or "readonly" in low or "read-only" in low:
        return read_only(db_path, root)
    if name == "SQLITE_FULL" or "disk is full" in low:
        return StoreError(f"run store {db}: cannot {action} ({msg}); free some space or give "
                          f"another --root")
    if name.startswith("SQLITE_IOERR") or "disk i/o" in low:
        return StoreError(f"run store {db}: cannot {action} ({msg}); check the disk, the "
                          f"file's permissions and free space, then try again")
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in low:
        return StoreError(f"run store {db} cannot be opened ({msg}); check that "
                          f"{str(root)!r} is a folder this user can read")
    return StoreError(f"run store {db}: cannot {action} ({msg}); {rebuild_hint(root)}")
