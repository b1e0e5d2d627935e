"""Job kinds: what one job of the engine runs, by kind.

A job function takes the job's config, its run folder (a `seqmem.store.Run`), an `emit`
callback for progress events and whether to resume, and returns the summary to record.

- train: build the run's parts, `fit` them, then evaluate after training (free-running
  metrics of dynamics tasks, accuracy at other lengths);
- continual: build the protocol and the method, run `fit_continual`;
- analyze: the analyses of a stored run (`seqmem.analysis`), headline numbers as summary.

- bench: `seqmem bench` into the job's folder (no run in the store).

Register another kind with `@job_kind("name", records=...)`: what the engine records of it in
the store: "run" (its own run: status, summary, heartbeat), "summary" (a job on an existing
run that adds to its summary without changing its status: an analysis) or "nothing" (the
job's folder is only where it writes: a bench).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from seqmem import build
from seqmem.analysis.analyze import analyze_run, headline
from seqmem.analysis.dynamics import free_run_metrics
from seqmem.bench.config import BenchConfig
from seqmem.bench.peers import peers_to
from seqmem.bench.run import bench_to
from seqmem.config import RunConfig
from seqmem.continual.config import ContinualConfig
from seqmem.continual.loop import HEADLINE, fit_continual
from seqmem.devices import model_device
from seqmem.errors import SeqmemError, check_choice
from seqmem.train import distributed
from seqmem.train.loop import FREE_RUN_SEED, eval_lengths, fit, is_regression

Emit = Callable[[dict], None]


RECORDS = ("run", "summary", "nothing")


@dataclass(frozen=True)
class JobKind:
    name: str
    run: Callable[..., dict]
    records: str = "run"  # what the engine records in the store (see the module docstring)

    @property
    def owns_run(self) -> bool:
        return self.records == "run"


JOB_KINDS: dict[str, JobKind] = {}


def job_kind(name: str, *, records: str = "run"):
    """Decorator: register `fn(cfg, run, *, emit, resume) -> summary` as job kind `name`."""
    check_choice("job records", records, RECORDS)

    def deco(fn):
        if name in JOB_KINDS:
            raise SeqmemError(f"job kind {name!r} is already registered")
        JOB_KINDS[name] = JobKind(name, fn, records)
        return fn

    return deco


def get_kind(name: str) -> JobKind:
    if name not in JOB_KINDS:
        raise SeqmemError(f"unknown job kind {name!r}; accepted: {', '.join(JOB_KINDS)}")
    return JOB_KINDS[name]


@job_kind("train")
def train_run(cfg: RunConfig, run, *, emit: Emit | None = None, resume: bool = False) -> dict:
    """Train a run (see `seqmem.train.loop.fit`), then evaluate it after training: D_stsp and
    D_H of free-running trajectories for tasks that have them, and `eval.lengths`."""
    parts = build.train_parts(cfg, root=run.dir.parent)  # the store the run belongs to
    if cfg.train.nproc > 1 or distributed.launched_by_torchrun():  # rank 0 of several
        device = model_device(parts.model)
        nproc = int(os.environ["WORLD_SIZE"]) if distributed.launched_by_torchrun() \
            else cfg.train.nproc
        with distributed.lead(cfg.model_dump(mode="json"), run.id, nproc, device,
                              resume=resume):
            summary = fit(cfg, distributed.LeadRun(run), parts, emit=emit, resume=resume)
    else:
        summary = fit(cfg, run, parts, emit=emit, resume=resume)
    final_task = parts.make_task(parts.curriculum, split="test")
    if cfg.eval.free_run_steps and hasattr(final_task, "trajectory"):
        parts.model.eval()
        fr = free_run_metrics(parts.model, final_task, n_steps=cfg.eval.free_run_steps,
                              n_traj=cfg.eval.free_run_trajectories,
                              generator=torch.Generator().manual_seed(FREE_RUN_SEED))
        summary.update(fr)
        run.log({"event": "free_run", **fr})
    if cfg.eval.lengths:
        key = "mse_by_length" if is_regression(final_task) else "acc_by_length"
        summary[key] = eval_lengths(cfg, parts, parts.generator)
        run.log({"event": "eval_lengths", key: summary[key]})
    run.write_summary(summary)
    return summary


@job_kind("continual")
def continual_run(cfg: ContinualConfig, run, *, emit: Emit | None = None,
                  resume: bool = False) -> dict:
    """A continual-learning run; the store indexes its headline (the full summary, with the
    accuracy matrix, is in the run's summary.json)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    protocol, method = build.build_continual(cfg)
    resume = resume and "last" in run.checkpoints()
    summary = fit_continual(cfg, run, protocol, method, emit=emit, resume=resume)
    return {k: summary[k] for k in HEADLINE if k in summary}


@dataclass(frozen=True)
class AnalysisRequest:
    """What an analyze job computes: the analyses `what`, their probe seed, and options of
    `seqmem.analysis.analyze.analyze_run` (e.g. the lighter `QUICK` settings), on `device`
    (auto | cpu | cuda | cuda:N | mps: where the models and their probes compute)."""

    what: tuple[str, ...] | None = None  # None: every registered analysis
    seed: int = 0
    options: dict = field(default_factory=dict)
    threads: int | None = 1
    device: str = "auto"


@job_kind("analyze", records="summary")
def analyze_job(cfg: AnalysisRequest, run, *, emit: Emit | None = None,
                resume: bool = False) -> dict:
    """The analyses of a stored training run (written to its analysis.json); the headline
    numbers are the summary, added to the run's."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_cfg = RunConfig.model_validate(run.config())
    say = (lambda msg: emit({"event": "analysis", "message": msg})) if emit else None
    what = tuple(cfg.what) if cfg.what is not None else None
    out = analyze_run(run_cfg, run, what=what, seed=cfg.seed, progress=say,
                      device=cfg.device, **cfg.options)
    return headline(out)


@dataclass(frozen=True)
class BenchRequest:
    """A bench job: what to measure, the command line to record, whether to write README.md."""

    cfg: BenchConfig
    command: str = "seqmem bench"
    readme: bool = False


@job_kind("bench", records="nothing")
def bench_job(cfg: BenchRequest, run, *, emit: Emit | None = None, resume: bool = False) -> dict:
    """`seqmem bench` with its outputs in the job's folder; progress as "bench" events; the
    summary holds the context, the rows and the paths written."""
    say = (lambda msg: emit({"event": "bench", "message": msg})) if emit else None
    if cfg.cfg.peers:
        ctx, rows, paths = peers_to(cfg.cfg, run.dir, command=cfg.command, progress=say)
    else:
        ctx, rows, paths = bench_to(cfg.cfg, run.dir, command=cfg.command, progress=say,
                                    readme=cfg.readme)
    return {"context": ctx, "rows": rows, "paths": {k: str(p) for k, p in paths.items()}}


def run_job(kind: str, cfg: Any, run, *, emit: Emit | None = None, resume: bool = False
            ) -> dict:
    """Run one job of `kind` in this process."""
    return get_kind(kind).run(cfg, run, emit=emit, resume=resume)
