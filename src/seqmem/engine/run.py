"""The run engine: one loop that runs jobs on a backend and records every ending.

The engine's process is the only writer of the store's database. Jobs write only their run
folder and report events; the engine records status, summaries and heartbeats, draws the
progress, retries failed jobs, and stops cleanly on Ctrl-C. Every way a job can end is
recorded:

- done: the job finished (a training run: its curriculum or its budget);
- failed: a non-finite loss or an exception (the reason is stored; checkpoint "last" is
  kept), retried (resumed) up to `retries` times unless the failure is deterministic;
- interrupted: Ctrl-C (SIGINT) or SIGTERM; `--resume RUN_ID` continues from "last";
- a process killed outright leaves its row "running", which `seqmem runs` shows as stale.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from seqmem.engine.backends import (
    Job,
    Processes,
    Ray,
    choose_backend,
    guarded,
    raise_interrupt,
    resume_hint,
)
from seqmem.engine.display import Quiet
from seqmem.engine.jobs import get_kind
from seqmem.engine.logging import RunLog, loggers_of
from seqmem.errors import SeqmemError
from seqmem.store import RunStore

HEARTBEAT_S = 10.0


@dataclass
class Outcome:
    """What the engine did: each job's final status and end event, the retries it made, and
    whether it was interrupted (Ctrl-C / SIGTERM)."""

    status: dict[str, str] = field(default_factory=dict)
    ended: dict[str, dict] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    summaries: dict[str, dict] = field(default_factory=dict)
    interrupted: bool = False


class Recorder:
    """Applies a job's events to the store (status, summary, heartbeat), the live loggers a
    run asks for (`seqmem.engine.logging`) and the display."""

    def __init__(self, store: RunStore, display, extra: Callable[[str], dict] | None = None):
        self.store, self.display = store, display
        self.extra = extra or (lambda rid: {})
        self.jobs: dict[str, Job] = {}
        self.ended: dict[str, dict] = {}
        self.summaries: dict[str, dict] = {}
        self.beats: dict[str, float] = {}
        self.logs: dict[str, RunLog] = {}

    def __call__(self, run_id: str, ev: dict) -> None:
        job = self.jobs[run_id]
        records = "nothing" if ev.get("record") is False else get_kind(job.kind).records
        owns = records == "run"
        kind = ev["event"]
        if owns:
            self.live_log(job, ev)
        if kind == "start" and owns:
            self.store.set_status(run_id, "running")
        if "summary" in ev:  # a job that does not own its run adds to the run's summary
            self.summaries[run_id] = ev["summary"]
            if records != "nothing":
                base = {} if owns else self.store.get(run_id)["summary"]
                self.store.update_summary(run_id, {**base, **ev["summary"],
                                                   **self.extra(run_id)})
        if kind == "end":
            self.ended[run_id] = ev
            if owns:
                self.store.set_status(run_id, ev["status"], ev.get("reason"))
        elif owns and time.monotonic() - self.beats.get(run_id, 0.0) > HEARTBEAT_S:
            self.beats[run_id] = time.monotonic()
            self.store.heartbeat(run_id)
        self.display.update(run_id, ev)

    def live_log(self, job: Job, ev: dict) -> None:
        """Open the run's loggers when it starts, log its epochs, close them at its end."""
        names = loggers_of(job.cfg)
        if not names:
            return
        if job.run_id not in self.logs and ev["event"] != "end":  # its first event
            self.logs[job.run_id] = RunLog(names, job.run_dir, job.run_id,
                                           job.cfg.model_dump(mode="json"))
        log = self.logs.get(job.run_id)
        if log is not None:
            log.event(ev)
            if ev["event"] == "end":
                self.logs.pop(job.run_id).close()


def execute(jobs: list[Job], store: RunStore, *, backend: str = "inline",
            workers: int | None = None, address: str | None = None, retries: int = 0,
            display=None, prepare: Callable[[Job], Job] | None = None,
            extra: Callable[[str], dict] | None = None, status_line: Callable | None = None,
            poll_s: float = 0.5) -> Outcome:
    """Run the jobs on `backend` (inline, process, ray or auto), `workers` at a time.

    `prepare(job)` is called just before a job starts and may return it with its run created
    (a sweep creates runs only when they start); `extra(run_id)` is merged into every summary
    recorded; `status_line(outcome, pending, running)` gives the line the display notes
    after each job settles. Ctrl-C stops every job cleanly: each is recorded as interrupted
    with its last good checkpoint, and `interrupted` is set.
    """
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise SeqmemError(f"workers must be >= 1, got {workers}")
    kind = choose_backend(backend, workers if not address else 2)
    display = display or Quiet()
    rec = Recorder(store, display, extra)
    out = Outcome()
    pending = list(jobs)
    running: dict[str, Job] = {}
    stopping = False

    def begin(job: Job) -> Job:
        job = prepare(job) if prepare else job
        rec.jobs[job.run_id] = job
        display.add(job)
        running[job.run_id] = job
        return job

    def settle(rid: str, crash: str | None) -> None:
        """A job's worker is gone: its final status, or back in the queue for a retry."""
        job = running.pop(rid)
        ev = rec.ended.pop(rid, None)
        if ev is None:
            ev = {"event": "end", "status": "interrupted" if stopping else "failed",
                  "reason": resume_hint(job) if stopping else
                  (crash or "the worker ended without reporting")}
            rec(rid, ev)
            rec.ended.pop(rid)
        st = ev["status"]
        retriable = st == "failed" and ev.get("retriable", True)
        if retriable and out.attempts.get(rid, 0) < retries and not stopping:
            out.attempts[rid] = out.attempts.get(rid, 0) + 1
            has_last = "last" in store.open_run(rid).checkpoints()
            display.note(f"retrying {job.label} ({out.attempts[rid]}/{retries}): "
                         f"{ev.get('reason')}")
            pending.insert(0, dataclasses.replace(job, resume=has_last))  # same resources
            out.status[rid] = "retrying"
        else:
            out.status[rid] = st
            out.ended[rid] = ev
        if status_line:
            display.note(status_line(out, pending, running))

    with display:
        if kind == "inline":
            old = signal.signal(signal.SIGTERM, raise_interrupt)
            try:
                while pending and not stopping:
                    job = begin(pending.pop(0))
                    if get_kind(job.kind).owns_run:
                        store.heartbeat(job.run_id, pid=os.getpid())
                    guarded(job, lambda ev, rid=job.run_id: rec(rid, ev))
                    stopping = rec.ended.get(job.run_id, {}).get("status") == "interrupted"
                    settle(job.run_id, None)
            except KeyboardInterrupt:  # between jobs (e.g. while recording): still recorded
                stopping = True
                for rid in list(running):
                    if rid not in rec.ended:
                        rec(rid, {"event": "end", "status": "interrupted",
                                  "reason": resume_hint(running[rid])})
                    settle(rid, None)
            finally:
                signal.signal(signal.SIGTERM, old)
        else:
            be = Ray(workers, address) if kind == "ray" else Processes(workers)
            try:
                while pending or running:
                    while pending and len(running) < be.slots and not stopping:
                        job = begin(pending.pop(0))
                        pid = be.start(job)
                        if get_kind(job.kind).owns_run:
                            store.heartbeat(job.run_id, pid=pid or os.getpid())
                    for rid, ev in be.events(poll_s):
                        rec(rid, ev)
                    for rid, crash in be.finished():
                        for rid2, ev in be.events(0.05):  # events sent just before the exit
                            rec(rid2, ev)
                        settle(rid, crash)
            except KeyboardInterrupt:
                stopping = True
                # Workers ignore Ctrl-C: SIGTERM stops each (recorded as interrupted); wait
                # for their end events.
                be.stop()
                deadline = time.monotonic() + 30.0
                while running and time.monotonic() < deadline:
                    for rid, ev in be.events(0.2):
                        rec(rid, ev)
                    for rid, crash in be.finished():
                        settle(rid, crash)
                for rid in list(running):  # a job that reported its end keeps it
                    if rid not in rec.ended:
                        rec(rid, {"event": "end", "status": "interrupted",
                                  "reason": resume_hint(running[rid])})
                    settle(rid, None)
            finally:
                be.close()
    for job in pending:  # never started (Ctrl-C): a run that exists stays resumable
        if job.run_dir and get_kind(job.kind).owns_run:
            store.set_status(job.run_id, "interrupted",
                             "interrupted before this run (re)started; resume it")
            out.status[job.run_id] = "interrupted"
    out.summaries = {rid: ev.get("summary") or rec.summaries.get(rid, {})
                     for rid, ev in out.ended.items()}
    out.interrupted = stopping
    return out
