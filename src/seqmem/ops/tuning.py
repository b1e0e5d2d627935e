"""The chunk length each chunked op runs at when its caller gives none (`chunk_size=None`).

The fastest chunk length of a chunked op depends on the machine (cache sizes, the matmul
kernel, the thread count), so it is measured, not guessed: `seqmem bench --chunks --write`
times every chunked op at several chunk lengths and saves the best per op to a JSON file for
this machine, torch version and thread count. `chunk_size(op)` returns, in this order:

1. the measured best for this machine from that file, if the file has it;
2. else the packaged default (`DEFAULTS`, measured on the reference machine and recorded in
   `benchmarks/chunks.md`), or `FALLBACK` for an op the bench does not tune.

The selective scans (`ops.selective`) differ in step 2: without a measured length they bound
their chunks by a cache-sized working set alone (`selective.scan_chunk`), so they call
`measured(op)` rather than `chunk_size(op)`.

The file is `$SEQMEM_CHUNK_SIZES` if that is set, else `$XDG_CACHE_HOME/seqmem/
chunk_sizes.json` (`~/.cache/seqmem/chunk_sizes.json` without XDG_CACHE_HOME). Its shape:
`{"<machine key>": {"<op>": <chunk length>, ...}, ...}`, the key from `machine_key()`. A file
that cannot be read or parsed is ignored with one warning line (per file), never an error:
the ops then run at the packaged defaults.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from functools import lru_cache
from pathlib import Path

import torch

#: The chunked ops the bench tunes (`seqmem bench --chunks`).
TUNED = ("linear_attention", "retention", "gla", "delta_rule", "gated_delta_rule", "ssd",
         "ssd_signed", "selective_scan", "selective_scan_signed")
#: The chunk lengths `seqmem bench --chunks` tries.
CANDIDATES = (16, 32, 64, 128, 256)
#: The chunk length of an op that is not tuned, and of every op until measured.
FALLBACK = 64
#: The packaged defaults: the best chunk length per op on the reference machine (a 2-core AMD
#: EPYC, one thread), from the table in benchmarks/chunks.md. The selective scans have none:
#: unmeasured, they bound their chunks by a working set (module docstring).
DEFAULTS: dict[str, int] = {"linear_attention": 64, "retention": 32, "gla": 32, "delta_rule": 32,
                            "gated_delta_rule": 32, "ssd": 64, "ssd_signed": 64}

_loaded: dict[tuple[str, int | None], dict] = {}  # (path, mtime_ns) -> the parsed file
_seen: dict[tuple[str, int | None], int | None] = {}  # (op, threads) -> the last lookup


def cache_path() -> Path:
    """Where the per-machine chunk lengths are read from and written to."""
    given = os.environ.get("SEQMEM_CHUNK_SIZES")
    if given:
        return Path(given).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "seqmem" / "chunk_sizes.json"


@lru_cache(maxsize=1)
def cpu() -> str:
    """The CPU model (Linux /proc/cpuinfo, else platform) and its logical core count."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} logical cores)"


def machine_key(threads: int | None = None) -> str:
    """The key of this machine in the file: the CPU model and core count, torch's version and
    the thread count (`threads`, default torch's current one)."""
    n = torch.get_num_threads() if threads is None else threads
    return f"{cpu()} | torch {torch.__version__} | {n} thread(s)"


def _read(path: Path) -> dict:
    """The parsed file at path ({} if there is none); an unreadable or malformed one gives {}
    and one warning line, once per version of the file."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return {}  # no file: nothing measured here
    key = (str(path), mtime)
    if key in _loaded:
        return _loaded[key]
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise ValueError("not an object of objects {machine: {op: chunk length}}")
    except (OSError, ValueError, UnicodeDecodeError) as e:
        sys.stderr.write(f"warning: ignoring the chunk-size file {path} (the packaged "
                         f"defaults apply): {str(e).splitlines()[0][:120]}\n")
        data = {}
    _loaded.clear()
    _loaded[key] = data
    return data


def measured(op: str, threads: int | None = None) -> int | None:
    """The chunk length measured for op on this machine (None if the file lacks it). Under
    torch.compile, which cannot trace a file read, the length this process looked up last
    outside it (the packaged default if it never did)."""
    if torch.compiler.is_compiling():
        return _seen.get((op, threads))
    value = _read(cache_path()).get(machine_key(threads), {}).get(op)
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        value = None
    _seen[(op, threads)] = value
    return value


def chunk_size(op: str) -> int:
    """The chunk length op runs at by default: this machine's measured best, else the
    packaged default (module docstring)."""
    found = measured(op)
    return found if found is not None else DEFAULTS.get(op, FALLBACK)


def resolve(op: str, chunk_size_: int | None) -> int:
    """chunk_size_ itself when given, else `chunk_size(op)`: what an op or a mixer calls with
    the chunk_size its caller passed."""
    return chunk_size(op) if chunk_size_ is None else chunk_size_


def save(best: dict[str, int], *, threads: int | None = None, path: Path | None = None
         ) -> Path:
    """Record the measured best chunk length per op for this machine (other machines' and
    other ops' entries kept); returns the file written. A file that cannot be parsed is
    replaced."""
    path = path or cache_path()
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError, UnicodeDecodeError):
        data = {}
    key = machine_key(threads)
    entry = data.get(key) if isinstance(data.get(key), dict) else {}
    entry.update({op: int(c) for op, c in best.items()})
    data[key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
