"""Run a sweep: plan against the store, then run the plan on the engine with retries.

The driver is the only writer of the store. For every point of the sweep it looks up the
runs with the same config hash: a run that is done is skipped; one that failed, was
interrupted or whose process is gone (stale) is resumed from its checkpoint "last" (or
restarted in place if it has none); otherwise a run is created. So re-running a sweep after
Ctrl-C, a killed driver or a dead worker finishes exactly the missing runs, each once.

Backends (`workers` runs at a time; see `seqmem.engine`):
- "ray": one Ray task per run (`ray.init` locally with `workers` CPUs, or `address` to join
  a cluster); events come back through a Ray queue; a task whose worker dies is recorded.
- "process": one spawned process per run (no Ray needed).
- "inline": one run after another in this process (`workers=1`).
A sweep's `resources` (per run) go with each job: Ray's num_gpus / num_cpus, or the process
backend's round-robin pinning of runs to GPUs; asking for a GPU that this machine lacks is an
error before anything runs (not checked when joining a cluster at `address`).
A run whose worker dies or raises is recorded as failed with its reason and retried (resumed)
up to `retries` times; a non-finite loss is not retried (it would fail the same way).

A two-phase sweep (`two_phase`, Cha & Cho 2024) is two plain sweeps, `run_two_phase`: the
tuning phase's, then the evaluation phase's of the point selected on the first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from seqmem.engine import Job, Quiet, execute
from seqmem.engine.backends import check_gpus, choose_backend
from seqmem.errors import SeqmemError
from seqmem.store import RunStore, config_hash
from seqmem.sweep.spec import SweepSpec, expand, phase_spec, point_label


@dataclass
class Plan:
    """What a sweep will do: jobs to run (new or resumed) and runs already done."""

    jobs: list[Job] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # running in another live process
    points: dict[str, dict] = field(default_factory=dict)  # run id -> grid point


def plan_sweep(spec: SweepSpec, store: RunStore) -> Plan:
    """Match every point to the store (see the module docstring)."""
    plan = Plan()
    resources = spec.resources.model_dump() if spec.resources is not None else None
    for point, cfg in expand(spec):
        rows = [r for r in store.find_by_hash(config_hash(cfg.model_dump(mode="json")))
                if r["kind"] == "sweep"]
        label = point_label(point)
        if any(r["status"] == "done" for r in rows):
            rid = next(r["id"] for r in rows if r["status"] == "done")
            plan.done.append(rid)
        elif rows and rows[0]["status"] == "running":
            plan.busy.append(rows[0]["id"])
            rid = rows[0]["id"]
        elif rows:
            run = store.open_run(rows[0]["id"])
            rid = run.id
            plan.jobs.append(Job(cfg, run.id, str(run.dir), label=label,
                                 resume="last" in run.checkpoints(), kind=spec.kind,
                                 resources=resources))
        else:  # created when it starts, so a sweep stopped early leaves no empty rows
            rid = f"new-{len(plan.points)}"
            plan.jobs.append(Job(cfg, rid, "", label=label, kind=spec.kind,
                                 resources=resources))
        plan.points[rid] = point
    return plan


@dataclass
class SweepResult:
    plan: Plan
    status: dict[str, str]  # run id -> final status
    attempts: dict[str, int]
    interrupted: bool = False


def run_sweep(spec: SweepSpec, store: RunStore, *, workers: int | None = None,
              backend: str = "auto", address: str | None = None,
              progress: Callable[[str], None] | None = None, poll_s: float = 0.5
              ) -> SweepResult:
    """Plan the sweep against the store and run what is missing on the engine. Ctrl-C stops
    it cleanly (every run recorded; interrupted runs resume on the next call) and sets
    `interrupted`."""
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise SeqmemError(f"--workers must be an integer >= 1 (runs at a time), got {workers}")
    plan = plan_sweep(spec, store)
    if not address:  # a cluster's GPUs are Ray's to find; this machine's are checked here
        check_gpus(plan.jobs)
    n_total, t0 = len(plan.points), time.monotonic()
    durations: list[float] = []
    started: dict[str, float] = {}
    kind = choose_backend(backend, (workers or 2) if not address else 2)

    def create_if_new(job: Job) -> Job:
        started[job.run_id] = time.monotonic()
        if not job.run_id.startswith("new-"):
            return job
        run = store.create_run(job.cfg.model_dump(mode="json"), kind="sweep", name=spec.name)
        plan.points[run.id] = plan.points.pop(job.run_id)
        started[run.id] = started.pop(job.run_id)
        store.update_summary(run.id, {"point": plan.points[run.id]})
        return Job(job.cfg, run.id, str(run.dir), job.label, kind=job.kind,
                   resources=job.resources)

    def line(out=None, pending=(), running=()) -> str:
        status = {**{rid: "done" for rid in plan.done}, **(out.status if out else {})}
        for rid in list(started):
            if rid not in running:
                durations.append(time.monotonic() - started.pop(rid))
        n_done = sum(s == "done" for s in status.values())
        n_failed = sum(s == "failed" for s in status.values())
        left = len(pending) + len(running)
        eta = ""
        if durations and left:
            eta = f", ETA {sum(durations) / len(durations) * left / max(len(running), 1):.0f} s"
        return (f"sweep {spec.name}: {n_done}/{n_total} done, {len(running)} running, "
                f"{n_failed} failed, {len(pending)} pending{eta} ({kind}, "
                f"{time.monotonic() - t0:.0f} s)")

    display = Quiet(progress)
    display.note(line(pending=plan.jobs))
    out = execute(plan.jobs, store, backend=backend, workers=workers, address=address,
                  retries=spec.retries, display=display, prepare=create_if_new,
                  extra=lambda rid: {"point": plan.points.get(rid)}, status_line=line,
                  poll_s=poll_s)
    status = {**{rid: "done" for rid in plan.done}, **out.status}
    return SweepResult(plan, status, out.attempts, interrupted=out.interrupted)


# ---- two phases: tune on one stream, evaluate the frozen choice on another -------------------
@dataclass
class PhaseScore:
    """One point of a phase: the mean of the selected metric over its done runs."""

    point: dict
    label: str
    score: float | None
    runs: list[str]
    summaries: list[dict]


@dataclass
class TwoPhaseResult:
    tune: SweepResult
    tune_scores: list[PhaseScore]
    best: PhaseScore | None
    evaluate: SweepResult | None = None
    eval_score: PhaseScore | None = None

    @property
    def interrupted(self) -> bool:
        return self.tune.interrupted or bool(self.evaluate and self.evaluate.interrupted)

    @property
    def status(self) -> dict[str, str]:
        return {**self.tune.status, **(self.evaluate.status if self.evaluate else {})}


def phase_scores(res: SweepResult, store: RunStore, metric: str) -> list[PhaseScore]:
    """Per point (seeds pooled): the mean of summary metric `metric` over the done runs that
    have it (None if none has it), in the order of the sweep."""
    groups: dict[str, PhaseScore] = {}
    for rid, point in res.plan.points.items():
        frozen = {k: v for k, v in point.items() if k != "seed"}
        key = point_label(frozen)
        g = groups.setdefault(key, PhaseScore(frozen, key, None, [], []))
        g.runs.append(rid)
        if res.status.get(rid) == "done" and not rid.startswith("new-"):
            g.summaries.append(store.get(rid)["summary"])
    for g in groups.values():
        vals = [s[metric] for s in g.summaries if isinstance(s.get(metric), (int, float))]
        g.score = sum(vals) / len(vals) if vals else None
    return list(groups.values())


def select_best(scores: list[PhaseScore], mode: str) -> PhaseScore | None:
    """The point of best score ("min" or "max"; the first of equal ones), None if none has
    a score."""
    scored = [s for s in scores if s.score is not None]
    if not scored:
        return None
    pick = min if mode == "min" else max
    return pick(scored, key=lambda s: s.score)


def run_two_phase(spec: SweepSpec, store: RunStore, **kw) -> TwoPhaseResult:
    """Run a two-phase sweep (Cha & Cho 2024): the grid on the tuning stream (`<name>-tune`),
    then the point whose mean `select` over its seeds is best, frozen, on the evaluation stream
    (`<name>-eval`, the same seeds). Keyword arguments go to `run_sweep` for both phases. If
    the first phase is interrupted or no point has the metric, the second does not run."""
    tp = spec.two_phase
    if tp is None:
        raise SeqmemError(f"sweep {spec.name!r} has no two_phase key")
    mode = tp.direction()
    tune = run_sweep(phase_spec(spec, "tune"), store, **kw)
    scores = phase_scores(tune, store, tp.select)
    best = select_best(scores, mode)
    out = TwoPhaseResult(tune, scores, best)
    if tune.interrupted or best is None:
        return out
    ev_spec = phase_spec(spec, "evaluate", best.point)
    out.evaluate = run_sweep(ev_spec, store, **kw)
    ev = phase_scores(out.evaluate, store, tp.select)
    out.eval_score = ev[0] if ev else None
    return out
