"""Drive training runs: in this process or one process per run, with live progress.

The driver is the only writer of the store's database. Training (`train.loop.train`) writes
only its run folder and reports events; the driver records status, summaries and heartbeats
and draws the progress display. Every way a run can end is recorded:

- done: the curriculum finished or the budget ran out;
- failed: a non-finite loss or an exception (the reason is stored; checkpoint "last" is kept);
- interrupted: Ctrl-C (SIGINT) or SIGTERM; `--resume RUN_ID` continues from "last";
- a process killed outright leaves its row "running", which `seqmem runs` shows as stale.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import time
import traceback
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.table import Table

from seqmem.config import RunConfig
from seqmem.errors import RunFailed
from seqmem.store import Run, RunStore
from seqmem.train.loop import train


@dataclass
class Job:
    """One run to drive: its config, its id in the store, and whether to resume it."""

    cfg: RunConfig
    run_id: str
    run_dir: str
    label: str
    resume: bool = False


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def guarded_train(job: Job, emit) -> None:
    """Train one job, turning every ending into a final event (done/failed/interrupted)."""
    run = Run(job.run_id, job.run_dir)
    try:
        summary = train(job.cfg, run, emit=emit, resume=job.resume)
        emit({"event": "end", "status": "done", "summary": summary})
    except RunFailed as e:  # deterministic (e.g. a non-finite loss): retrying would repeat it
        emit({"event": "end", "status": "failed", "reason": str(e), "retriable": False})
    except KeyboardInterrupt:
        emit({"event": "end", "status": "interrupted",
              "reason": "interrupted; resume with `seqmem train --resume " + job.run_id + "`"})
    except Exception as e:  # recorded, never lost
        emit({"event": "end", "status": "failed",
              "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})


def _worker(job: Job, q) -> None:
    signal.signal(signal.SIGTERM, _raise_interrupt)
    guarded_train(job, lambda ev: q.put((job.run_id, ev)))


class Display:
    """Live table of the runs (a line per event where the console is not a terminal)."""

    def __init__(self, jobs: list[Job], console: Console, enabled: bool = True):
        self.jobs = {j.run_id: j for j in jobs}
        self.rows: dict[str, dict] = {j.run_id: {"status": "starting"} for j in jobs}
        self.console = console
        self.enabled = enabled
        self.live = (Live(self.table(), console=console, auto_refresh=False)
                     if enabled and console.is_terminal else None)
        self.t0 = time.monotonic()

    def __enter__(self):
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.update(self.table(), refresh=True)
            self.live.__exit__(*exc)

    def table(self) -> Table:
        tab = Table(title="seqmem training", title_justify="left")
        for col in ("run", "curriculum", "N", "acc (mean / newest) | eval mse", "epoch",
                    "elapsed", "tau mean", "status"):
            tab.add_column(col)
        for rid, j in self.jobs.items():
            r = self.rows[rid]
            acc = r.get("acc") or []
            score = (f"{sum(acc) / len(acc):.3f} / {acc[-1]:.3f}" if acc
                     else f"{r['eval_mse']:.4g}" if "eval_mse" in r else "")
            tab.add_row(
                j.label, j.cfg.curriculum.kind, str(r.get("N", "")), score,
                str(r.get("epoch", "")), f"{r.get('elapsed_s', 0):.0f} s",
                f"{r['tau_mean']:.3f}" if "tau_mean" in r else "", r["status"],
            )
        return tab

    def update(self, run_id: str, ev: dict) -> None:
        row = self.rows[run_id]
        label = self.jobs[run_id].label
        if ev["event"] == "start":
            row["status"] = "resumed" if ev.get("resume") else "running"
        elif ev["event"] == "epoch":
            row.update(ev["record"])
            row["status"] = "running"
        elif ev["event"] == "advance" and self.enabled and not self.live:
            st = ev["stage"]
            tau = f", tau {st['tau_mean']:.3f}±{st['tau_sd']:.3f}" if "tau_mean" in st else ""
            self.console.print(f"[{label}] N={st['N']} solved at epoch {st['epoch']} "
                               f"({st['elapsed_s']:.0f} s{tau})", markup=False)
        elif ev["event"] == "end":
            row["status"] = ev["status"]
            if self.enabled and not self.live:
                extra = f": {ev['reason']}" if ev.get("reason") else ""
                self.console.print(f"[{label}] {ev['status']}{extra}", markup=False)
        if self.live:
            self.live.update(self.table(), refresh=True)


class Recorder:
    """Applies events to the store (the single DB writer) and the display."""

    def __init__(self, store: RunStore, display: Display):
        self.store, self.display = store, display
        self.ended: dict[str, dict] = {}
        self.summaries: dict[str, dict] = {}

    def __call__(self, run_id: str, ev: dict) -> None:
        kind = ev["event"]
        if kind == "start":
            self.store.set_status(run_id, "running")
        if "summary" in ev:
            self.summaries[run_id] = ev["summary"]
            self.store.update_summary(run_id, ev["summary"])
        if kind == "end":
            self.ended[run_id] = ev
            self.store.set_status(run_id, ev["status"], ev.get("reason"))
        self.display.update(run_id, ev)


def execute(jobs: list[Job], store: RunStore, *, parallel: bool = False, progress: bool = True,
            console: Console | None = None) -> dict[str, dict]:
    """Run the jobs (one process each if `parallel`), record them, return their end events.

    Each end event has "status" (done / failed / interrupted), "summary" where training
    produced one, and "reason" otherwise. Ctrl-C stops every job cleanly (each is recorded
    as interrupted with its last good checkpoint) and re-raises KeyboardInterrupt.
    """
    console = console or Console(stderr=False)
    display = Display(jobs, console, enabled=progress)
    rec = Recorder(store, display)
    for j in jobs:
        store.heartbeat(j.run_id, pid=os.getpid())
    interrupted = False
    with display:
        if not parallel or len(jobs) == 1:
            old = signal.signal(signal.SIGTERM, _raise_interrupt)
            try:
                for j in jobs:
                    guarded_train(j, lambda ev, rid=j.run_id: rec(rid, ev))
                    if rec.ended.get(j.run_id, {}).get("status") == "interrupted":
                        interrupted = True
                        break
            finally:
                signal.signal(signal.SIGTERM, old)
        else:
            interrupted = _execute_parallel(jobs, store, rec)
    for j in jobs:  # anything that never reported an end was interrupted before it started
        if j.run_id not in rec.ended:
            rec(j.run_id, {"event": "end", "status": "interrupted",
                           "reason": "interrupted before training started"})
    if interrupted:
        raise KeyboardInterrupt
    return {rid: {**ev, "summary": ev.get("summary") or rec.summaries.get(rid, {})}
            for rid, ev in rec.ended.items()}


def _execute_parallel(jobs: list[Job], store: RunStore, rec: Recorder) -> bool:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = {}
    for j in jobs:
        p = ctx.Process(target=_worker, args=(j, q), daemon=True)
        p.start()
        procs[j.run_id] = p
        store.heartbeat(j.run_id, pid=p.pid)
    interrupted = False
    try:
        while True:
            try:
                rid, ev = q.get(timeout=0.5)
                rec(rid, ev)
                continue
            except queue_mod.Empty:
                pass
            if all(not p.is_alive() for p in procs.values()):
                break
    except KeyboardInterrupt:
        interrupted = True
        # A terminal's Ctrl-C reaches the workers too; SIGTERM reaches those it did not.
        for grace, stop in ((5.0, False), (20.0, True)):
            if stop:
                for p in procs.values():
                    if p.is_alive() and p.pid:
                        os.kill(p.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while (any(p.is_alive() for rid, p in procs.items() if rid not in rec.ended)
                   and time.monotonic() < deadline):
                try:
                    rid, ev = q.get(timeout=0.2)
                    rec(rid, ev)
                except queue_mod.Empty:
                    pass
    while True:  # drain what is left
        try:
            rid, ev = q.get(timeout=0.2)
            rec(rid, ev)
        except queue_mod.Empty:
            break
    for rid, p in procs.items():
        p.join(timeout=5)
        if rid not in rec.ended:
            code = p.exitcode
            reason = (f"worker process ended with exit code {code} without reporting"
                      if not interrupted else "interrupted")
            rec(rid, {"event": "end", "status": "interrupted" if interrupted else "failed",
                      "reason": reason})
    sys.stdout.flush()
    return interrupted
