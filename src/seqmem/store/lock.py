"""The run lock: one process at a time writes a run.

    <root>/<id>/.lock    {"run", "pid", "host", "since"} of the process holding it

The lock is an exclusive `flock` on that file, taken without waiting: a second process gets
`RunLocked`, naming the holder from the file. The operating system drops an flock when its
process ends, however it ends (kill -9 included), so a lock is never stale and needs no
cleanup; the file itself stays (removing it would let two processes lock two different
files of one name). The holder's details are cleared when it lets go, and are only
believed while the file is locked.

Within one process the lock is re-entrant (a nested `hold` of the same run returns at
once), so the process that runs a job may take it more than once. A query (`holder`)
briefly takes a shared lock to see whether anyone holds it; an acquirer therefore retries
for `GRACE_S` before it reports the run as locked.

POSIX only (fcntl.flock); on other platforms taking a lock raises StoreError.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from seqmem.store.faults import RunLocked, StoreError, os_error

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
GRACE_S = 0.25  # how long an acquirer waits out a query's shared lock
UNKNOWN = {"run": None, "pid": None, "host": None, "since": None}


@dataclass
class _Held:
    fd: int
    pid: int
    info: dict
    depth: int = 1


_HELD: dict[str, _Held] = {}  # lock file (real path) -> the hold of this process
_GUARD = threading.Lock()


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


def _key(run_dir: Path) -> str:
    return os.path.realpath(Path(run_dir) / LOCK_NAME)


def _mine(key: str) -> _Held | None:
    h = _HELD.get(key)
    return h if h is not None and h.pid == os.getpid() else None  # not a forked parent's


def _read_info(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        info = json.loads(data.decode()) if data.strip() else {}
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict):
        info = {}
    return {**UNKNOWN, **{k: info.get(k) for k in UNKNOWN if k in info}}


def _acquire(path: Path, run_id: str) -> int:
    """An open descriptor of `path` holding its exclusive flock."""
    if fcntl is None:
        raise StoreError(f"cannot lock run {run_id}: run locks need POSIX file locks "
                         f"(fcntl), which this platform lacks")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as e:
        raise os_error(e, path, f"lock run {run_id} at") from e
    deadline = time.monotonic() + GRACE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.01)
                continue
            info = _read_info(fd)
            os.close(fd)
            raise RunLocked(run_id, info) from None
        except OSError as e:
            os.close(fd)
            raise os_error(e, path, f"lock run {run_id} at") from e


@contextlib.contextmanager
def hold(run_dir: str | Path, run_id: str) -> Iterator[dict]:
    """Hold the exclusive lock of the run in `run_dir` for the block; yields the holder's
    details (run, pid, host, since). Raises RunLocked if another process holds it."""
    key = _key(Path(run_dir))
    with _GUARD:
        h = _mine(key)
        if h is not None:
            h.depth += 1
    if h is not None:
        try:
            yield dict(h.info)
        finally:
            with _GUARD:
                h.depth -= 1
        return
    path = Path(run_dir) / LOCK_NAME
    fd = _acquire(path, run_id)
    info = {"run": run_id, "pid": os.getpid(), "host": socket.gethostname(),
            "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
    except OSError as e:
        os.close(fd)  # lets go of the lock too
        raise os_error(e, path, f"lock run {run_id} at") from e
    with _GUARD:
        _HELD[key] = _Held(fd, os.getpid(), info)
    try:
        yield dict(info)
    finally:
        with _GUARD:
            _HELD.pop(key, None)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the details are only true while it is held
        os.close(fd)


def holder(run_dir: str | Path) -> dict | None:
    """Who holds the lock of the run in `run_dir` (run, pid, host, since), or None when no
    process does; never raises (a lock that cannot be inspected reads as not held)."""
    key = _key(Path(run_dir))
    with _GUARD:
        h = _mine(key)
        if h is not None:
            return dict(h.info)
    if fcntl is None:
        return None
    try:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_info(fd)
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
