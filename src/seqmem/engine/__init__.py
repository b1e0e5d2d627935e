"""The run engine: every job (train, continual, analyze) runs through `execute`, inline, in
processes or on Ray, with one recorder of status, summaries and progress.

    jobs.py      job kinds: what a job runs (`train_run`, `continual_run`, ...)
    backends.py  where it runs (inline, spawned processes, Ray) and how every ending is caught
    run.py       the loop: start, record, retry, stop cleanly
    display.py   live progress
"""

from seqmem.engine.backends import BACKENDS, Job
from seqmem.engine.display import Display, Quiet
from seqmem.engine.jobs import JOB_KINDS, continual_run, job_kind, run_job, train_run
from seqmem.engine.run import Outcome, execute

__all__ = ["BACKENDS", "JOB_KINDS", "Display", "Job", "Outcome", "Quiet", "continual_run",
           "execute", "job_kind", "run_job", "train_run"]
