"""A run's folder: resolved config, metrics (JSON lines), checkpoints, summary.

    <root>/<id>/config.yaml      the resolved config
    <root>/<id>/meta.json        id, kind, name, config hash, git commit, host, versions
    <root>/<id>/metrics.jsonl    one JSON record per line, appended
    <root>/<id>/summary.json     the latest summary
    <root>/<id>/checkpoints/<tag>.safetensors

A Run touches only files, so a worker process may write its folder while the driver alone
writes the database. Every file that is rewritten is replaced atomically (a temporary file
in the same folder, fsync, then os.replace), so a killed process leaves the old file or the
new one, never half of one; metrics are appended and a line cut short is skipped on reading.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from seqmem.errors import SeqmemError
from seqmem.store.state import flatten_state, unflatten_state

CKPT_SUFFIX = ".safetensors"
STATE_FORMAT = "1"  # the skeleton layout in the checkpoint metadata (seqmem.store.state)


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
    """Replace `path` by `data` atomically: the old content or the new, never a mix."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


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
    copied."""
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
        out[k] = t
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
        """The resolved config, from config.yaml."""
        p = self.dir / "config.yaml"
        if not p.exists():
            raise SeqmemError(f"run {self.id} has no config.yaml in {str(self.dir)!r}; "
                              f"accepted: a run folder made by RunStore.create_run")
        return yaml.safe_load(p.read_text()) or {}

    def meta(self) -> dict:
        """meta.json (id, kind, name, config hash, git commit, host, versions); {} if none."""
        p = self.dir / "meta.json"
        return json.loads(p.read_text()) if p.exists() else {}

    # ---- metrics --------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        """Append `record` as one JSON line to metrics.jsonl (flushed, so a killed process
        loses at most the line it was writing)."""
        line = json.dumps(record, default=_jsonable).encode() + b"\n"
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "metrics.jsonl", "a+b") as f:
            # a line cut short by a killed process must not swallow this one
            end = f.seek(0, os.SEEK_END)
            if end:
                f.seek(end - 1)
                if f.read(1) != b"\n":
                    line = b"\n" + line
            f.write(line)
            f.flush()

    def metrics(self) -> list[dict]:
        """All records, oldest first; a line cut short (a process killed mid-write) is
        skipped."""
        p = self.dir / "metrics.jsonl"
        if not p.exists():
            return []
        out = []
        for line in p.read_bytes().decode(errors="replace").split("\n"):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    # ---- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self, tag: str, state: Any) -> Path:
        """Write `state` (a nested structure, see flatten_state) to
        checkpoints/<tag>.safetensors atomically and return the path; the structure goes
        into the file's metadata as JSON."""
        path = self.ckpt_dir / f"{_check_tag(tag)}{CKPT_SUFFIX}"
        tensors, skeleton = flatten_state(state)
        tensors = _storable(tensors)
        meta = {"seqmem_state": STATE_FORMAT, "skeleton": json.dumps(skeleton)}
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_path(path)
        try:
            save_file(tensors, str(tmp), metadata=meta)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
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
        if not self.ckpt_dir.exists():
            return []
        found = []
        for p in self.ckpt_dir.glob(f"*{CKPT_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):  # removed while we look
                found.append((p.stat().st_mtime_ns, p.name.removesuffix(CKPT_SUFFIX)))
        return [tag for _, tag in sorted(found)]

    # ---- summary --------------------------------------------------------------------------
    def write_summary(self, summary: dict) -> None:
        """Replace summary.json by `summary`, atomically."""
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / "summary.json", json.dumps(summary, indent=1, default=_jsonable))

    def read_summary(self) -> dict:
        """summary.json, or {} if there is none yet."""
        p = self.dir / "summary.json"
        return json.loads(p.read_text()) if p.exists() else {}

