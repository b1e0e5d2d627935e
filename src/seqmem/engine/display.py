"""Progress of the engine's jobs: a live table on a terminal, a line per event elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.live import Live
from rich.table import Table

from seqmem import tasks


class Quiet:
    """No progress display (`--no-progress`), or a callback that receives status lines."""

    def __init__(self, say: Callable[[str], None] | None = None):
        self.say = say or (lambda msg: None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def add(self, job) -> None:
        pass

    def update(self, run_id: str, ev: dict) -> None:
        pass

    def note(self, msg: str) -> None:
        self.say(msg)


class Display(Quiet):
    """Live table of the jobs (a line per notable event where the console is not a terminal):
    curriculum stage, accuracy (or the evaluation MSE of regression tasks; the column is
    named by what the jobs report), epoch, elapsed time and mean tau for training runs;
    experience and step for continual runs."""

    refresh_s = 0.25

    def __init__(self, jobs: list, console: Console, enabled: bool = True):
        super().__init__(lambda msg: console.print(msg, markup=False))
        self.jobs = {j.run_id: j for j in jobs}
        self.rows: dict[str, dict] = {j.run_id: {"status": "starting"} for j in jobs}
        self.console = console
        self.enabled = enabled
        self.live = (Live(self.table(), console=console, auto_refresh=False)
                     if enabled and console.is_terminal else None)
        self.last_draw = 0.0

    def __enter__(self):
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.update(self.table(), refresh=True)
            self.live.__exit__(*exc)

    def add(self, job) -> None:
        """A job whose run id became known when it started (a sweep creates runs late)."""
        self.jobs.setdefault(job.run_id, job)
        self.rows.setdefault(job.run_id, {"status": "starting"})

    def score_name(self) -> str:
        """"acc" where every job is scored by accuracy, "eval mse" where every one is a
        regression, both where the jobs are mixed."""
        names = {score_of(j) for j in self.jobs.values()}
        return " | ".join(n for n in ("acc", "eval mse") if n in names) or "acc"

    def table(self) -> Table:
        tab = Table(title="seqmem", title_justify="left")
        for col in ("run", "curriculum / method", "N / experience", self.score_name(),
                    "epoch / step", "elapsed", "tau mean", "status"):
            tab.add_column(col)
        for rid, j in self.jobs.items():
            r = self.rows[rid]
            acc = r.get("acc") or []
            score = (f"{sum(acc) / len(acc):.3f} / {acc[-1]:.3f}" if acc
                     else f"{r['eval_mse']:.4g}" if "eval_mse" in r else "")
            if j.kind == "continual":
                stage, when = r.get("experience", ""), r.get("step", "")
                what = j.cfg.method
            else:
                stage, when = r.get("N", ""), r.get("epoch", "")
                what = j.cfg.curriculum.kind
            tab.add_row(j.label, what, str(stage), score, str(when),
                        f"{r.get('elapsed_s', 0):.0f} s",
                        f"{r['tau_mean']:.3f}" if "tau_mean" in r else "", r["status"])
        return tab

    def update(self, run_id: str, ev: dict) -> None:
        if run_id not in self.rows:
            return
        row = self.rows[run_id]
        label = self.jobs[run_id].label
        kind = ev["event"]
        quiet_lines = self.enabled and not self.live
        if kind == "start":
            row["status"] = "resumed" if ev.get("resume") else "running"
        elif kind == "epoch":
            row.update(ev["record"])
            row["status"] = "running"
        elif kind == "step":  # a continual run's optimizer step
            row.update({"experience": f"{ev['experience'] + 1}", "step": ev["step"],
                        "status": "running"})
        elif kind == "experience":
            row.update({"acc": ev["acc"], "elapsed_s": ev["elapsed_s"]})
            if quiet_lines:
                accs = ", ".join(f"{a:.3f}" for a in ev["acc"])
                self.console.print(f"[{label}] experience {ev['experience'] + 1} done "
                                   f"({ev['elapsed_s']:.0f} s): "
                                   f"{'MSE' if ev.get('score') == 'mse' else 'accuracy'} on "
                                   f"each: {accs}",
                                   markup=False)
        elif kind == "advance" and quiet_lines:
            st = ev["stage"]
            tau = f", tau {st['tau_mean']:.3f}±{st['tau_sd']:.3f}" if "tau_mean" in st else ""
            self.console.print(f"[{label}] N={st['N']} solved at epoch {st['epoch']} "
                               f"({st['elapsed_s']:.0f} s{tau})", markup=False)
        elif kind == "end":
            row["status"] = ev["status"]
            if quiet_lines:
                extra = f": {ev['reason']}" if ev.get("reason") else ""
                self.console.print(f"[{label}] {ev['status']}{extra}", markup=False)
        if self.live and (kind != "step" or time.monotonic() - self.last_draw > self.refresh_s):
            self.last_draw = time.monotonic()
            self.live.update(self.table(), refresh=True)


def score_of(job) -> str:
    """What a job's progress reports: "eval mse" for a regression task (`loss = "mse"`),
    "acc" otherwise (classification tasks and continual runs)."""
    task = getattr(getattr(job, "cfg", None), "task", None)
    kind = getattr(task, "kind", None)
    if job.kind == "continual" or not isinstance(kind, str) or kind not in tasks.names():
        return "acc"
    return "eval mse" if getattr(tasks.get(kind), "loss", "ce") == "mse" else "acc"


class Status(Quiet):
    """Progress messages of the jobs (`message` events, e.g. a bench's or an analysis's stage)
    on stderr: one spinner line with the newest message on a terminal, else one timestamped
    line per message (a log of what ran, and when)."""

    def __init__(self, console: Console, title: str, *, err: Console | None = None):
        super().__init__(lambda msg: console.print(msg, markup=False))
        self.title = title
        self.err = err or Console(stderr=True)
        self.status = self.err.status(title) if self.err.is_terminal else None

    def __enter__(self):
        if self.status:
            self.status.__enter__()
        return self

    def __exit__(self, *exc):
        return self.status.__exit__(*exc) if self.status else None

    def message(self, msg: str) -> None:
        """Show one progress message."""
        if self.status:
            self.status.update(f"{self.title}: {msg}")
        else:
            self.err.print(f"{time.strftime('%H:%M:%S')} {self.title}: {msg}", markup=False,
                           soft_wrap=True)

    def update(self, run_id: str, ev: dict) -> None:
        if "message" in ev:
            self.message(ev["message"])

