"""Where the engine's jobs run: in this process, in spawned processes, or on Ray.

Every backend turns a job into the same stream of events `(run id, event)` and reports
workers that have exited (with a reason when one died without reporting its end).

A job may carry the resources one run asks for (a sweep file's `resources: {gpu: 0.25,
cpu: 1}`): on Ray they are the task's `num_gpus` / `num_cpus`, so that Ray packs several small
runs onto one GPU; the process backend pins each run that asks for a GPU to one device,
round-robin (the i-th such run sees device i mod k of the k CUDA devices, as its
CUDA_VISIBLE_DEVICES), and leaves how many run at a time to `workers`; inline runs ignore them.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seqmem.engine.jobs import get_kind
from seqmem.errors import RunFailed, SeqmemError
from seqmem.store import Run, RunLocked, RunStore

BACKENDS = ("auto", "ray", "process", "inline")
RESOURCES = ("gpu", "cpu")  # what one run may ask for


@dataclass
class Job:
    """One job: its kind (train, continual, analyze), config, run in the store, label."""

    cfg: Any
    run_id: str
    run_dir: str
    label: str
    resume: bool = False
    kind: str = "train"
    resources: dict[str, float] | None = None  # per run: {"gpu": share of a GPU, "cpu": cores}


def run_device(cfg: Any) -> str:
    """The device a job's config asks for (`train.device`; "auto" for a config without one)."""
    return str(getattr(getattr(cfg, "train", None), "device", "auto"))


def gpu_share(job: Job) -> float:
    """The GPU share a job asks for: its `resources.gpu`, 0 when none or when the run's device
    is cpu (such a run computes on the CPU whatever it asked for)."""
    if run_device(job.cfg) == "cpu":
        return 0.0
    return float((job.resources or {}).get("gpu", 0.0))


def check_gpus(jobs: list[Job]) -> None:
    """A one-line error when a job asks for a GPU (resources.gpu > 0, its train.device not cpu)
    and this machine has none."""
    asking = [j for j in jobs if gpu_share(j) > 0]
    if asking and not torch.cuda.is_available():
        raise SeqmemError(f"resources.gpu asks for a GPU but this machine has none (torch "
                          f"{torch.__version__} sees no CUDA device; {len(asking)} run"
                          f"{'s' if len(asking) != 1 else ''} asking); remove the key, set "
                          f"resources.gpu to 0, or run on CPU with train.device=cpu")


def ray_options(resources: dict[str, float] | None) -> dict[str, Any]:
    """The Ray task options of one run: `num_cpus` (default 1) and `num_gpus` (when it asks
    for a GPU: a fraction lets Ray run several tasks on one device), never retried by Ray (the
    engine retries, resuming from the run's checkpoint)."""
    res = resources or {}
    unknown = sorted(set(res) - set(RESOURCES))
    if unknown:
        raise SeqmemError(f"unknown resource {unknown[0]!r}; accepted: {', '.join(RESOURCES)}")
    out: dict[str, Any] = {"num_cpus": float(res.get("cpu", 1)), "max_retries": 0}
    if res.get("gpu", 0) > 0:
        out["num_gpus"] = float(res["gpu"])
    return out


def raise_interrupt(signum, frame):
    """A signal handler that turns SIGTERM into KeyboardInterrupt (a clean interrupt)."""
    raise KeyboardInterrupt


def resume_hint(job: Job) -> str:
    """The reason stored for an interrupted job: how to resume it, where it can be."""
    if not get_kind(job.kind).owns_run:
        return "interrupted"
    command = {"continual": "seqmem continual --resume"}.get(job.kind, "seqmem train --resume")
    return f"interrupted; resume with `{command} {job.run_id}`"


def guarded(job: Job, emit) -> None:
    """Run one job in this process, turning every ending into a final event: done (with the
    summary), failed (with the reason) or interrupted. A job that owns its run holds the
    run's lock meanwhile; if another process holds it, the job does not run and its end
    ("refused", naming the holder) is not recorded over the other process's."""
    run = Run(job.run_id, job.run_dir)
    lock = run.lock() if get_kind(job.kind).owns_run else contextlib.nullcontext()
    try:
        lock.__enter__()
    except RunLocked as e:  # another process writes this run: record nothing over it
        emit({"event": "end", "status": "refused", "reason": str(e), "retriable": False,
              "record": False})
        return
    try:
        summary = get_kind(job.kind).run(job.cfg, run, emit=emit, resume=job.resume)
        emit({"event": "end", "status": "done", "summary": summary})
    except RunFailed as e:  # deterministic (e.g. a non-finite loss): retrying would repeat it
        emit({"event": "end", "status": "failed", "reason": str(e), "retriable": False})
    except KeyboardInterrupt:
        emit({"event": "end", "status": "interrupted", "reason": resume_hint(job)})
    except SeqmemError as e:  # bad input found while building: retrying would repeat it
        emit({"event": "end", "status": "failed", "reason": str(e), "retriable": False})
    except Exception as e:  # recorded, never lost
        emit({"event": "end", "status": "failed",
              "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
    finally:
        lock.__exit__(None, None, None)


ORPHAN_POLL_S = 1.0


def process_worker(job: Job, q, cuda_devices: str | None = None) -> None:
    """The body of a spawned worker process: the job's events go to the queue `q`.

    `cuda_devices`, when given, becomes the process's CUDA_VISIBLE_DEVICES before anything
    initialises CUDA (torch reads it on its first CUDA call, not at import), so the run sees
    its pinned GPU as cuda:0.

    Ctrl-C belongs to the driver (it stops workers with SIGTERM, which ends the job as
    interrupted). A worker whose driver is gone (killed) notices within ORPHAN_POLL_S, stops
    its job the same way and, the driver being unable to, records the end of its run itself;
    it never waits on the dead driver's queue."""
    if cuda_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_devices
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    q.cancel_join_thread()  # buffered events to a dead driver must not block the exit
    parent, orphaned = os.getppid(), threading.Event()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_POLL_S)
        orphaned.set()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="seqmem-orphan-watch").start()
    ended: list[dict] = []

    def emit(ev: dict) -> None:
        if ev["event"] == "end":
            ended.append(ev)
        if not orphaned.is_set():
            q.put((job.run_id, ev))

    guarded(job, emit)
    if orphaned.is_set() and ended and get_kind(job.kind).owns_run:
        ev = ended[-1]
        reason = (ev.get("reason") or "") + " (its sweep or run driver was gone)"
        RunStore(Path(job.run_dir).parent).set_status(job.run_id, ev["status"], reason.strip())


class Processes:
    """One spawned process per job; events through a multiprocessing queue."""

    name = "process"

    def __init__(self, workers: int):
        self.ctx = mp.get_context("spawn")
        self.q = self.ctx.Queue()
        self.procs: dict[str, mp.Process] = {}
        self.slots = workers
        self.n_pinned = 0  # runs pinned to a GPU so far

    def cuda_devices(self, job: Job) -> str | None:
        """The CUDA_VISIBLE_DEVICES of the next run: device i mod k for the i-th run asking for
        a GPU, when CUDA has k devices; None (the environment's own) for a run that asks for
        none, that names its device (cuda:N), or where there is no CUDA."""
        if gpu_share(job) <= 0 or run_device(job.cfg) not in ("auto", "cuda"):
            return None
        if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
            return None
        device = self.n_pinned % torch.cuda.device_count()
        self.n_pinned += 1
        return str(device)

    def start(self, job: Job) -> int | None:
        p = self.ctx.Process(target=process_worker, args=(job, self.q, self.cuda_devices(job)),
                             daemon=True)
        # The child starts with SIGINT ignored (Python keeps an ignored SIGINT), so that a
        # Ctrl-C during its start-up cannot end it before it can record an interruption.
        main = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            p.start()
        finally:
            if main:
                signal.signal(signal.SIGINT, old)
        self.procs[job.run_id] = p
        return p.pid

    def events(self, timeout: float) -> list[tuple[str, dict]]:
        out = []
        try:
            out.append(self.q.get(timeout=timeout))
            while True:
                out.append(self.q.get_nowait())
        except queue_mod.Empty:
            pass
        return out

    def finished(self) -> list[tuple[str, str | None]]:
        """(run id, reason if the worker died) for workers that have exited."""
        out = []
        for rid, p in list(self.procs.items()):
            if not p.is_alive():
                p.join(timeout=1)
                del self.procs[rid]
                out.append((rid, f"worker process ended with exit code {p.exitcode}"
                            if p.exitcode else None))
        return out

    def stop(self) -> None:
        for p in self.procs.values():
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGTERM)

    def close(self) -> None:
        for p in self.procs.values():
            p.join(timeout=5)
        self.q.close()
        self.q.join_thread()


def ray_worker(job: Job, q) -> None:
    guarded(job, lambda ev: q.put((job.run_id, ev)))


class Ray:
    """One Ray task per job; events through a Ray queue actor."""

    name = "ray"

    def __init__(self, workers: int, address: str | None):
        try:
            import ray
            from ray.util.queue import Queue
        except ImportError:
            raise SeqmemError("the ray backend needs Ray: pip install 'seqmem[scale]' (or use "
                              "--backend process)") from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            kw = {"address": address} if address else {"num_cpus": workers}
            try:
                # ray.init warns through its own loggers (e.g. "Token authentication is
                # enabled ..."), which would land in the middle of the progress display
                import logging

                ray_log = logging.getLogger("ray")
                level = ray_log.level
                ray_log.setLevel(logging.ERROR)
                try:
                    ray.init(include_dashboard=False, log_to_driver=False,
                             configure_logging=False, **kw)
                finally:
                    ray_log.setLevel(level)
            except Exception as e:  # e.g. the raylet did not start in time on a loaded machine
                raise SeqmemError(f"Ray did not start ({str(e).splitlines()[0][:200]}); run "
                                  f"again, or use --backend process") from None
        self.q = Queue()
        self.slots = workers if not address else int(ray.cluster_resources().get("CPU", 1))
        self.refs: dict = {}
        self.remote = ray.remote(num_cpus=1, max_retries=0)(ray_worker)

    def start(self, job: Job) -> int | None:
        task = self.remote.options(**ray_options(job.resources)) if job.resources else self.remote
        self.refs[task.remote(job, self.q)] = job.run_id
        return None  # the driver owns the row: a dead driver leaves the run stale

    def events(self, timeout: float) -> list[tuple[str, dict]]:
        out = []
        try:
            out.append(self.q.get(timeout=timeout))
            while not self.q.empty():
                out.append(self.q.get_nowait())
        except Exception:  # ray.util.queue.Empty
            pass
        return out

    def finished(self) -> list[tuple[str, str | None]]:
        if not self.refs:
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0)
        out = []
        for ref in ready:
            rid = self.refs.pop(ref)
            try:
                self.ray.get(ref)
                out.append((rid, None))
            except Exception as e:  # WorkerCrashedError, RayTaskError, ...
                out.append((rid, f"Ray worker failed: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:300]}"))
        return out

    def stop(self) -> None:
        for ref in list(self.refs):
            self.ray.cancel(ref, force=False)  # KeyboardInterrupt inside the task

    def close(self) -> None:
        # The queue actor and the tasks are owned by this driver and die with it (Ray's
        # fate sharing); a local Ray this driver started is shut down with it.
        if self.started:
            self.ray.shutdown()


def choose_backend(backend: str, workers: int) -> str:
    """The backend that runs: `auto` is inline for one worker, else Ray when installed, else
    processes."""
    if backend not in BACKENDS:
        raise SeqmemError(f"unknown backend {backend!r}; accepted: {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if workers == 1:
        return "inline"
    try:
        import ray  # noqa: F401  (only whether it is installed)
    except ImportError:
        return "process"
    return "ray"
