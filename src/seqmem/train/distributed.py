"""One training run over several processes: data parallel with plain torch.distributed.

    seqmem train --nproc 2 ...                         2 local processes (gloo on the CPU)
    torchrun --nproc-per-node 2 --no-python seqmem train ...            the same, by torchrun
    torchrun --nnodes 2 --node-rank R --rdzv-endpoint HOST:PORT --nproc-per-node G
             --no-python seqmem train --device cuda ...                 several machines

Every rank draws the whole global batch (`train.batch_size` sequences) from the run's one data
generator, exactly as a single process would, and computes the loss and the gradients of its
contiguous share of the sequences (rank r of R: sequences [r b / R, (r + 1) b / R)). A share's
loss is weighted by its fraction of the supervised positions, so that the gradients summed
over the ranks (one all-reduce per update) are the gradients of the whole batch; the logged
loss and the accuracies are summed likewise. Every rank then takes the same optimiser step
(the same gradients, the same clipping, the same gradient noise from the same generator), so
the parameters stay equal on every rank and equal, to float32 round-off, to those of one
process training on the whole batch: the only difference is the order of the additions.
Evaluation batches are shared out the same way. Drawing the whole batch on every rank costs
the (small) generation time once per rank and buys that equality and an exact resume.

Rank 0 (the lead) is the ordinary run: it alone writes the store, the metrics and the
checkpoints, and it reads checkpoint "last" on `--resume` and sends it to the other ranks.
The other ranks (followers) write nothing. If a follower dies or is killed, the lead's next
all-reduce fails and the run ends as interrupted, with its last good checkpoint; a killed
lead leaves the run stale (`seqmem runs`); either resumes with `seqmem train --resume`.

The backend is gloo for a CPU run and NCCL for a CUDA run (each rank on cuda:LOCAL_RANK).
With `--nproc N` (`train.nproc`) the lead starts N - 1 follower processes on this machine
(`python -m seqmem.engine.ranks`) and rendezvous on a free local port; under torchrun
the processes already exist and rendezvous from torchrun's environment (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT, LOCAL_RANK).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from seqmem.errors import SeqmemError
from seqmem.ops.loops import map_tensors

TIMEOUT = datetime.timedelta(minutes=30)  # a rank that waits longer than this gives up
FOLLOWERS: list[subprocess.Popen] = []  # the follower processes this lead started (tests)
FOLLOWER_MODULE = "seqmem.engine.ranks"  # what a follower process runs (`python -m`)
FOLLOWER_BACKEND = "SEQMEM_DIST_BACKEND"  # the environment variable naming gloo or nccl


# ---- where this process stands ------------------------------------------------------------
def active() -> bool:
    """Whether this process is one rank of a data-parallel run of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process in the run; (0, 1) outside one."""
    if active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher) started this process as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def env_rank() -> int:
    """This process's rank as torchrun's environment gives it (0 without one)."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: cuda becomes cuda:LOCAL_RANK under a launcher (one GPU per
    rank); any other device is returned as it is."""
    if device.type == "cuda" and launched_by_torchrun() and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


# ---- sharing out a batch ------------------------------------------------------------------
def share(n: int, rank: int, world: int) -> slice:
    """The contiguous share of rank `rank` of n items: [rank n / world, (rank + 1) n / world)."""
    return slice(rank * n // world, (rank + 1) * n // world)


def share_tree(tree: Any, part: slice) -> Any:
    """Every tensor of a nested state (tensors, tuples, lists, dicts, NamedTuples, None) cut
    to the sequences `part` along the batch axis 0."""
    return map_tensors(lambda t: t[part], tree)


def sum_across(t: Tensor) -> Tensor:
    """The sum of `t` over the ranks (a copy; `t` itself is unchanged)."""
    out = t.detach().clone()
    dist.all_reduce(out)
    return out


def reduce_gradients(model: torch.nn.Module) -> None:
    """Sum every parameter's gradient over the ranks, in one all-reduce of one flat buffer.
    A parameter without a gradient on this rank counts as zero there (and gets one when
    another rank has one), so that every rank ends with the same gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        piece = flat[offset:offset + n].view_as(g)
        offset += n
        if p.grad is None:
            p.grad = piece.clone()
        else:
            p.grad.copy_(piece)


def broadcast_object(obj: Any = None) -> Any:
    """Rank 0's `obj`, on every rank (a checkpoint, a config)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (they are equal already when every rank
    built the model from the same seed; this makes it so whatever happened)."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point() or t.dtype in (torch.int64, torch.int32, torch.bool):
                dist.broadcast(t, src=0)


class FollowerRun:
    """The run of a follower rank: it writes nothing, and reads its checkpoint from the
    lead (which loads it from the store)."""

    def __init__(self, run_id: str):
        self.id = run_id

    def load_checkpoint(self, tag: str = "last") -> Any:
        return broadcast_object()

    def save_checkpoint(self, tag: str, state: Any) -> None:
        return None

    def log(self, record: dict) -> None:
        return None

    def write_summary(self, summary: dict) -> None:
        return None


class LeadRun:
    """The lead's run: the store's run, except that a checkpoint it loads is also sent to
    the followers (who load theirs through `FollowerRun.load_checkpoint`)."""

    def __init__(self, run):
        self._run = run

    def load_checkpoint(self, tag: str = "last") -> Any:
        return broadcast_object(self._run.load_checkpoint(tag))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._run, name)


# ---- starting and ending ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def check_nproc(nproc: int, device: torch.device) -> None:
    """A one-line error for more ranks than a CUDA machine has GPUs (one GPU per rank)."""
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise SeqmemError(f"train.nproc={nproc} needs {nproc} GPUs (one per rank) but this "
                          f"machine has {torch.cuda.device_count()}; accepted: at most that")
    if device.type == "mps" and nproc > 1:
        raise SeqmemError("train.nproc > 1 is not supported on mps (no torch.distributed "
                          "backend); accepted: cpu (gloo) or cuda (nccl)")


@contextlib.contextmanager
def lead(cfg_json: dict, run_id: str, nproc: int, device: torch.device, *,
         resume: bool = False) -> Iterator[None]:
    """Rank 0 of a run of `nproc` ranks, for the body of the block: start the followers
    (unless torchrun did), join the process group, send them the run's config, and at the
    end leave the group and stop the followers. A follower that dies during the block ends
    it as interrupted (KeyboardInterrupt, which the engine records with the resume hint)."""
    check_nproc(nproc, device)
    backend = backend_for(device)
    FOLLOWERS.clear()
    if not launched_by_torchrun():
        port = free_port()
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "WORLD_SIZE": str(nproc), FOLLOWER_BACKEND: backend}
        for r in range(1, nproc):
            FOLLOWERS.append(subprocess.Popen(
                [sys.executable, "-m", FOLLOWER_MODULE],
                env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdin=subprocess.DEVNULL,
                start_new_session=True))  # Ctrl-C reaches the lead alone; it stops them
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0,
                                world_size=nproc, timeout=TIMEOUT)
    else:
        dist.init_process_group(backend, init_method="env://", timeout=TIMEOUT)
    ended = False
    try:
        broadcast_object({"config": cfg_json, "run_id": run_id, "resume": resume})
        yield
        ended = True
    except (RuntimeError, dist.DistBackendError) as e:
        if not _follower_gone():
            raise
        raise KeyboardInterrupt(f"a rank of the run ended ({str(e).splitlines()[0][:120]})"
                                ) from None
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        # at the end of the run the followers end by themselves; after an interruption they
        # may be waiting in a collective, and they write nothing: they are stopped at once
        _stop_followers(grace_s=10.0 if ended else 0.0)


def _follower_gone() -> bool:
    """Whether a follower this lead started has exited (under torchrun: assumed, since the
    lead cannot see the other processes and a collective failed)."""
    if not FOLLOWERS:
        return True
    for p in FOLLOWERS:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=2)
    return any(p.poll() is not None for p in FOLLOWERS)


def _stop_followers(grace_s: float) -> None:
    """Wait up to `grace_s` seconds for the followers to end, then kill any left (a follower
    holds nothing to save: killing it loses nothing)."""
    for p in FOLLOWERS:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=grace_s)
    for p in FOLLOWERS:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()
