"""The engine's entry points for commands: make jobs from configs, resume runs, run jobs.

Each function is what one command calls: `new_train_job` and `resume_job` (seqmem train),
`continual_jobs` and `resume_continual_job` (seqmem continual: methods x seeds is a small
sweep through the same engine), `run_jobs` (all of them).
"""

from __future__ import annotations

from rich.console import Console

from seqmem.build import check_fits
from seqmem.config import RunConfig, load_config
from seqmem.continual.config import ContinualConfig
from seqmem.devices import check_precision, resolve_device
from seqmem.engine.backends import Job
from seqmem.engine.display import Display, Quiet, Status
from seqmem.engine.jobs import BenchRequest
from seqmem.engine.run import Outcome, execute
from seqmem.errors import SeqmemError
from seqmem.ops import backends
from seqmem.store import RunStore

# what a resumed run may change: its budget, and where it computes (a checkpoint resumes on
# any device and under any number of processes; the data stream is the same)
RESUME_OVERRIDES = ("train.max_epochs", "train.max_time_s", "train.device", "train.compile",
                    "train.nproc")


def train_config(source=None, overrides: list[str] | None = None, *, mixer: str | None = None,
                 task: str | None = None, curriculum: str | None = None) -> RunConfig:
    """The config of a training run: a config (file, dict or defaults), the shortcuts
    `mixer`, `task`, `curriculum` and dotted overrides, applied in that order."""
    pre = [f"{k}={v}" for k, v in (("model.mixer.kind", mixer), ("task.kind", task),
                                   ("curriculum.kind", curriculum)) if v]
    return load_config(source, pre + list(overrides or []))


def new_train_job(store: RunStore, source=None, overrides: list[str] | None = None, *,
                  mixer: str | None = None, task: str | None = None,
                  curriculum: str | None = None, kind: str = "train") -> Job:
    """A new training run in the store, from a config (file, dict or defaults), the
    shortcuts `mixer`, `task`, `curriculum` and dotted overrides (applied in that order)."""
    cfg = train_config(source, overrides, mixer=mixer, task=task, curriculum=curriculum)
    check_fits(cfg)  # before the run exists: a batch that cannot fit is a config error
    check_precision(cfg.train.precision, resolve_device(cfg.train.device))  # likewise
    check_backends(cfg.train.backend)
    return job_for(store, cfg, kind=kind)


def check_backends(spec) -> None:
    """A one-line error for a kernel backend asked for by name that cannot run here."""
    for name in sorted(set(backends.check_spec(spec).values()) - {"auto", "torch"}):
        reason = backends.available(name)
        if reason:
            raise SeqmemError(f"train.backend: {reason}")


def job_for(store: RunStore, cfg: RunConfig, *, kind: str = "train",
            label: str | None = None) -> Job:
    """A new run of `cfg` in the store (row kind `kind`), as a training job."""
    run = store.create_run(cfg.model_dump(mode="json"), kind=kind, name=cfg.name)
    return Job(cfg, run.id, str(run.dir), label=label or cfg.name or run.id)


def resume_job(store: RunStore, run_id: str, overrides: list[str] | None = None) -> Job:
    """The job that continues a stored training run from its checkpoint "last". Only the
    budget, the device and the processes may change (`RESUME_OVERRIDES`); the run's config
    records it."""
    overrides = list(overrides or [])
    bad = [o for o in overrides if o.split("=")[0] not in RESUME_OVERRIDES]
    if bad:
        raise SeqmemError(f"--resume accepts only budget, device and process overrides "
                          f"({', '.join(RESUME_OVERRIDES)}); got {', '.join(bad)}")
    run = store.open_run(run_id)
    row = store.get(run.id)
    if row["status"] == "done" and not overrides:
        raise SeqmemError(f"run {run.id} is already done; nothing to resume (extend its "
                          f"budget with train.max_epochs=... or train.max_time_s=...)")
    has_last = "last" in run.checkpoints()
    if not has_last and run.metrics():
        raise SeqmemError(f"run {run.id} has metrics but no checkpoint 'last' to resume from; "
                          f"start it again with seqmem train")
    store.require_unlocked(run.id)  # still being trained by another process: refused
    cfg = load_config(run.config(), overrides)
    check_precision(cfg.train.precision, resolve_device(cfg.train.device))
    if overrides:
        store.update_config(run.id, cfg.model_dump(mode="json"))
    store.set_status(run.id, "running")
    # Without "last" the run stopped before it trained anything: it starts in place.
    return Job(cfg, run.id, str(run.dir), label=cfg.name or run.id, resume=has_last)


def continual_jobs(store: RunStore, source=None, overrides: list[str] | None = None, *,
                   methods: list[str] | None = None, seeds: list[int] | None = None,
                   protocol: str | None = None, setting: str | None = None,
                   mixer: str | None = None) -> list[Job]:
    """One continual-learning run per method x seed (each a run in the store)."""
    flags = [f"{k}={v}" for k, v in (("protocol", protocol), ("setting", setting),
                                     ("mixer", mixer)) if v]
    jobs = []
    for method in methods or [None]:
        for seed in seeds or [None]:
            extra = [*flags, *([f"method={method}"] if method else []),
                     *([f"seed={seed}"] if seed is not None else [])]
            cfg = load_config(source, [*extra, *(overrides or [])], schema=ContinualConfig)
            name = cfg.name or f"{cfg.protocol}-{cfg.method}-s{cfg.seed}"
            run = store.create_run(cfg.model_dump(mode="json"), kind="continual", name=name)
            jobs.append(Job(cfg, run.id, str(run.dir), label=f"{cfg.method} s{cfg.seed}",
                            kind="continual"))
    return jobs


def resume_continual_job(store: RunStore, run_id: str) -> Job:
    """The job that finishes an interrupted continual-learning run."""
    run = store.open_run(run_id)
    store.require_unlocked(run.id)
    cfg = load_config(run.config(), schema=ContinualConfig)
    store.set_status(run.id, "running")
    return Job(cfg, run.id, str(run.dir), label=f"{cfg.method} s{cfg.seed}", resume=True,
               kind="continual")


def run_bench_job(req: BenchRequest, out_dir, *, console: Console | None = None) -> dict:
    """Run a bench as an engine job in this process (outputs in `out_dir`, nothing in a
    store); its summary: context, rows and the paths written. A bench that fails (bad input)
    raises its error."""
    job = Job(req, "bench", str(out_dir), label="bench", kind="bench")
    out = execute([job], RunStore(out_dir), display=Status(console or Console(), "bench"))
    if out.interrupted:
        raise KeyboardInterrupt
    ev = out.ended["bench"]
    if ev["status"] != "done":
        raise SeqmemError(ev.get("reason") or "the bench failed")
    return out.summaries["bench"]


def run_jobs(store: RunStore, jobs: list[Job], *, parallel: bool = False,
             progress: bool = True, console: Console | None = None) -> Outcome:
    """Run the jobs (one process each if `parallel`) with a live display; Ctrl-C records
    every job as interrupted and re-raises KeyboardInterrupt."""
    console = console or Console()
    display = Display(jobs, console, enabled=progress) if progress else Quiet()
    parallel = parallel and len(jobs) > 1
    out = execute(jobs, store, backend="process" if parallel else "inline",
                  workers=len(jobs) if parallel else 1, display=display)
    if out.interrupted:
        raise KeyboardInterrupt
    return out
