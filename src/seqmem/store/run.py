"""A run's folder: resolved config, metrics (JSON lines), checkpoints, summary.

    <root>/<id>/config.yaml      the resolved config
    <root>/<id>/meta.json        id, kind, name, config hash, git commit, host, versions
    <root>/<id>/metrics.jsonl    one JSON record per epoch
    <root>/<id>/summary.json     the latest summary
    <root>/<id>/checkpoints/<tag>.safetensors

A Run touches only files, so a worker process may write its folder while the driver alone
writes the database. Every file that is rewritten is replaced atomically (write, then rename).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file

from seqmem.errors import SeqmemError
from seqmem.store.state import flatten_state, unflatten_state


def atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Run:
    """The folder of one run (see the module docstring)."""

    def __init__(self, run_id: str, run_dir: str | Path):
        self.id = run_id
        self.dir = Path(run_dir)

    def __repr__(self) -> str:
        return f"Run({self.id!r}, {str(self.dir)!r})"

    @property
    def ckpt_dir(self) -> Path:
        return self.dir / "checkpoints"

    def config(self) -> dict:
        return yaml.safe_load((self.dir / "config.yaml").read_text()) or {}

    def meta(self) -> dict:
        p = self.dir / "meta.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def log(self, record: dict) -> None:
        """Append one record to metrics.jsonl."""
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def metrics(self) -> list[dict]:
        """All records; a last line cut short (a process killed mid-write) is skipped."""
        p = self.dir / "metrics.jsonl"
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def save_checkpoint(self, tag: str, state: dict) -> Path:
        """Write checkpoints/<tag>.safetensors atomically; returns its path."""
        if not tag or "/" in tag or tag.startswith("."):
            raise SeqmemError(f"checkpoint tag {tag!r} must be a plain file name")
        tensors, skeleton = flatten_state(state)
        # safetensors refuses shared storage and needs contiguous tensors: store copies
        tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        path = self.ckpt_dir / f"{tag}.safetensors"
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"skeleton": json.dumps(skeleton)})
        os.replace(tmp, path)
        return path

    def load_checkpoint(self, tag: str = "last") -> dict:
        path = self.ckpt_dir / f"{tag}.safetensors"
        if not path.exists():
            have = ", ".join(self.checkpoints()) or "(none)"
            raise SeqmemError(f"run {self.id} has no checkpoint {tag!r}; it has: {have}")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            skeleton = json.loads(f.metadata()["skeleton"])
        return unflatten_state(load_file(str(path)), skeleton)

    def checkpoints(self) -> list[str]:
        """Checkpoint tags, oldest first."""
        if not self.ckpt_dir.exists():
            return []
        files = sorted(self.ckpt_dir.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
        return [p.name.removesuffix(".safetensors") for p in files]

    def write_summary(self, summary: dict) -> None:
        atomic_write(self.dir / "summary.json", json.dumps(summary, indent=1))

    def read_summary(self) -> dict:
        p = self.dir / "summary.json"
        return json.loads(p.read_text()) if p.exists() else {}
