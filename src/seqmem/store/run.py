"""A run's folder: resolved config, metrics (JSON lines), checkpoints, summary.

    <root>/<id>/config.yaml      the resolved config
    <root>/<id>/meta.json        id, kind, name, config hash, git commit, host, versions
    <root>/<id>/metrics.jsonl    one JSON record per line, appended
    <root>/<id>/summary.json     the latest summary
    <root>/<id>/checkpoints/<tag>.safetensors
    <root>/<id>/row.json         the run's row of the index as last recorded (seqmem.store.db)
    <root>/<id>/.lock            the run lock (seqmem.store.lock)

A Run touches only files, so a worker process may write its folder while the driver alone
writes the database. The process that writes a run holds its lock (`Run.lock()`), so two
processes never train one run. Every file that is rewritten is replaced atomically (a
temporary file in the same folder, fsync, then os.replace), so a killed process leaves the
old file or the new one, never half of one; metrics are appended and a line cut short is
skipped on reading.

Metrics records that carry an "epoch" (or, for continual runs, an "experience") are logged
once per value: a record whose value is not past the last one logged is not appended again,
so a process stopped between a checkpoint and its metrics line and then resumed can neither
duplicate nor skip one. Records without one (events) are always appended.

A file that cannot be read or written (a full or read-only disk, a file that is not what it
should be) raises a one-line StoreError naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from seqmem.errors import SeqmemError
from seqmem.store import lock as lock_mod
from seqmem.store.faults import StoreError, file_error, os_error
from seqmem.store.state import flatten_state, unflatten_state

try:
    import fcntl
except ImportError:  # not POSIX: appends are then guarded by the run lock alone
    fcntl = None  # type: ignore[assignment]

CKPT_SUFFIX = ".safetensors"
STATE_FORMAT = "1"  # the skeleton layout in the checkpoint metadata (seqmem.store.state)
ORDER_KEYS = ("epoch", "experience")  # a metrics record is logged once per value of these
TAIL_BLOCK = 1 << 16  # bytes read at a time from the end of metrics.jsonl


def _tmp_path(path: Path) -> Path:
    # per process, so two writers of one file never share a temporary; never *.safetensors
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def _fsync_dir(path: Path) -> None:
    # makes a rename durable on POSIX; folders cannot be opened on Windows, which is fine
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: str | bytes) -> None:
    """Replace `path` by `data` atomically: the old content or the new, never a mix. A
    failure (a full or read-only disk) raises a one-line StoreError and leaves the old."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise os_error(e, path, "write") from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    _fsync_dir(path.parent)


def read_text(path: Path, what: str = "read") -> str | None:
    """The text of `path`, None if there is no such file; other failures are StoreErrors."""
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as e:
        raise StoreError(f"run store: {str(path)!r} is not text ({e.reason} at byte "
                         f"{e.start}); restore or remove the file") from e
    except OSError as e:
        raise os_error(e, path, what) from e


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, None if there is no such file; a file that is not one is
    a one-line StoreError naming its line and column."""
    text = read_text(path)
    if text is None:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise StoreError(f"run store: {str(path)!r} is not valid JSON ({e.msg} at line "
                         f"{e.lineno}, column {e.colno}); restore or remove the file") from e
    if not isinstance(obj, dict):
        raise StoreError(f"run store: {str(path)!r} holds a JSON {type(obj).__name__}, not "
                         f"an object; restore or remove the file")
    return obj


def read_records(path: Path) -> list[dict]:
    """The JSON-object lines of a JSON-lines file, in order ([] if there is no such file); a
    line cut short (a process killed mid-write) is skipped."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise os_error(e, path, "read") from e
    out = []
    for line in data.decode(errors="replace").split("\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def order_key(record: dict) -> str | None:
    """The key (of ORDER_KEYS) by which `record` is logged once, None for an event."""
    return next((k for k in ORDER_KEYS if k in record), None)


def slot(record: dict) -> tuple[str, str] | None:
    """(key, value as JSON) of a record that is logged once per value, None for an event:
    two records of one slot are one epoch (or experience) logged twice."""
    key = order_key(record)
    return None if key is None else (key, json.dumps(record[key], default=str))


def _last_value(f, end: int, key: str) -> Any:
    """The value of `key` in the last whole JSON line of the open file `f` (of size `end`)
    that has one, reading blocks back from the end; None if no line has one."""
    needle = f'"{key}"'.encode()
    tail, pos = b"", end
    while pos > 0:
        step = min(TAIL_BLOCK, pos)
        pos -= step
        f.seek(pos)
        tail = f.read(step) + tail
        lines = tail.split(b"\n")
        tail = lines[0] if pos > 0 else b""  # may be the end of a line that starts earlier
        for line in reversed(lines[1:] if pos > 0 else lines):
            if needle not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut short
                continue
            if isinstance(rec, dict) and key in rec:
                return rec[key]
    return None


def _not_after(value: Any, last: Any) -> bool:
    try:
        return last is not None and value <= last
    except TypeError:  # not comparable: not ordered, log it
        return False


def _jsonable(o: Any) -> Any:
    # tensors, numpy scalars and the like in a metrics record or a summary
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def _check_tag(tag: str) -> str:
    bad = (not isinstance(tag, str) or not tag or tag.startswith(".") or tag.endswith(".tmp")
           or any(c in tag for c in "/\\\0"))
    if bad:
        raise SeqmemError(f"checkpoint tag {tag!r} is not accepted; accepted: a plain file name "
                          f"(no '/', no leading '.', not ending in '.tmp'), e.g. 'last', 'N004'")
    return tag


def _storable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous tensors, each with storage of its own (safetensors refuses shared
    storage: tied weights, or a tensor and its view); tensors alone on their storage are not
    copied. Tensors on another device come to the CPU (a checkpoint resumes on any device)."""
    out, seen = {}, set()
    for k, t in tensors.items():
        t = t.detach()
        if t.layout != torch.strided:
            raise SeqmemError(f"checkpoint tensor {k!r} has layout {t.layout}; accepted: dense "
                              f"(strided) tensors")
        ptr = (t.device, t.untyped_storage().data_ptr())
        if ptr in seen:
            t = t.clone(memory_format=torch.contiguous_format)
        else:
            seen.add(ptr)
            t = t.contiguous()
        out[k] = t.cpu()  # a checkpoint of a model on a GPU is written from the CPU
    return out


class Run:
    """The folder of one run (see the module docstring); only files, never the database."""

    def __init__(self, run_id: str, run_dir: str | Path):
        self.id = run_id
        self.dir = Path(run_dir)

    def __repr__(self) -> str:
        return f"Run({self.id!r}, {str(self.dir)!r})"

    @property
    def ckpt_dir(self) -> Path:
        return self.dir / "checkpoints"

    # ---- config and meta ----------------------------------------------------------------
    def config(self) -> dict:
        """The resolved config, from config.yaml; a file that is not a YAML mapping is a
        one-line StoreError naming its line and column."""
        p = self.dir / "config.yaml"
        text = read_text(p)
        if text is None:
            raise SeqmemError(f"run {self.id} has no config.yaml in {str(self.dir)!r}; "
                              f"accepted: a run folder made by RunStore.create_run")
        try:
            cfg = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise StoreError(f"run {self.id}: {str(p)!r} is not valid YAML ({what}{where}); "
                             f"fix the file or restore it (its hash is config_hash in "
                             f"meta.json)") from None
        if cfg is None:
            return {}
        if not isinstance(cfg, dict):
            raise StoreError(f"run {self.id}: {str(p)!r} holds a YAML "
                             f"{type(cfg).__name__}, not a mapping; fix the file or restore "
                             f"it (its hash is config_hash in meta.json)")
        return cfg

    def meta(self) -> dict:
        """meta.json (id, kind, name, config hash, git commit, host, versions); {} if none."""
        return read_json(self.dir / "meta.json") or {}

    # ---- the run lock ---------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[dict]:
        """Hold the run's exclusive lock while writing it (see seqmem.store.lock): another
        process that tries gets RunLocked naming this one. Re-entrant within a process;
        released when the block ends or the process dies. Yields the holder's details."""
        with lock_mod.hold(self.dir, self.id) as info:
            yield info

    def lock_holder(self) -> dict | None:
        """The process holding the run's lock (run, pid, host, since), None if none does."""
        return lock_mod.holder(self.dir)

    # ---- metrics --------------------------------------------------------------------------
    def log(self, record: dict) -> bool:
        """Append `record` as one JSON line to metrics.jsonl (flushed, so a killed process
        loses at most the line it was writing) and return True; a record whose "epoch" (or
        "experience") is not past the last one logged is not appended (False)."""
        line = json.dumps(record, default=_jsonable).encode() + b"\n"
        key = order_key(record)
        path = self.dir / "metrics.jsonl"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(path, "a+b") as f:
                if fcntl is not None:  # two appenders never interleave their check and write
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                end = f.seek(0, os.SEEK_END)
                if key is not None and end and _not_after(record[key],
                                                          _last_value(f, end, key)):
                    return False
                # a line cut short by a killed process must not swallow this one
                if end:
                    f.seek(end - 1)
                    if f.read(1) != b"\n":
                        line = b"\n" + line
                f.write(line)
                f.flush()
        except OSError as e:
            raise os_error(e, path, "write") from e
        return True

    def metrics(self) -> list[dict]:
        """All records, oldest first; a line cut short (a process killed mid-write) is
        skipped, and of records with the same "epoch" (or "experience"), as an older
        version could write, only the last is kept."""
        out = read_records(self.dir / "metrics.jsonl")
        slots = [slot(rec) for rec in out]
        last = {s: i for i, s in enumerate(slots) if s is not None}
        return [rec for i, (rec, s) in enumerate(zip(out, slots, strict=True))
                if s is None or last[s] == i]

    # ---- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self, tag: str, state: Any) -> Path:
        """Write `state` (a nested structure, see flatten_state) to
        checkpoints/<tag>.safetensors atomically and return the path; the structure goes
        into the file's metadata as JSON."""
        path = self.ckpt_dir / f"{_check_tag(tag)}{CKPT_SUFFIX}"
        tensors, skeleton = flatten_state(state)
        tensors = _storable(tensors)
        meta = {"seqmem_state": STATE_FORMAT, "skeleton": json.dumps(skeleton)}
        tmp = _tmp_path(path)
        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(tmp), metadata=meta)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, SafetensorError) as e:
            raise file_error(e, path, "write") from e
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        _fsync_dir(self.ckpt_dir)
        return path

    def load_checkpoint(self, tag: str = "last") -> Any:
        """The state saved under `tag` (tensors on the CPU), the inverse of save_checkpoint."""
        path = self.ckpt_dir / f"{_check_tag(tag)}{CKPT_SUFFIX}"
        if not path.exists():
            have = ", ".join(self.checkpoints()) or "none"
            raise SeqmemError(f"run {self.id} has no checkpoint {tag!r}; accepted: {have}")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except (SafetensorError, OSError) as e:
            raise SeqmemError(f"checkpoint {tag!r} of run {self.id} cannot be read ({e}); "
                              f"accepted: a file written by save_checkpoint") from None
        if "skeleton" not in meta:  # written by another tool: its flat dict of tensors
            return tensors
        return unflatten_state(tensors, json.loads(meta["skeleton"]))

    def checkpoints(self) -> list[str]:
        """Checkpoint tags present, oldest modification first (temporary files excluded)."""
        if not self.ckpt_dir.is_dir():
            return []
        found = []
        try:
            for p in self.ckpt_dir.glob(f"*{CKPT_SUFFIX}"):
                with contextlib.suppress(FileNotFoundError):  # removed while we look
                    found.append((p.stat().st_mtime_ns, p.name.removesuffix(CKPT_SUFFIX)))
        except OSError as e:
            raise os_error(e, self.ckpt_dir, "read") from e
        return [tag for _, tag in sorted(found)]

    # ---- summary --------------------------------------------------------------------------
    def write_summary(self, summary: dict) -> None:
        """Replace summary.json by `summary`, atomically."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise os_error(e, self.dir, "create") from e
        atomic_write(self.dir / "summary.json", json.dumps(summary, indent=1, default=_jsonable))

    def read_summary(self) -> dict:
        """summary.json, or {} if there is none yet."""
        return read_json(self.dir / "summary.json") or {}

