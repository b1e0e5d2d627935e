"""The run store: a folder per run (config, metrics, checkpoints, summary) and one SQLite
database indexing them (see seqmem.store.db and seqmem.store.run); the run lock
(seqmem.store.lock), one-line errors of the store's files (seqmem.store.faults) and the
index checked against the folders or rebuilt from them (seqmem.store.repair)."""

from seqmem.store.db import STATUSES, RunStore, config_hash
from seqmem.store.faults import RunLocked, StoreError
from seqmem.store.repair import CheckReport, Problem, RebuildReport
from seqmem.store.run import Run
from seqmem.store.state import flatten_state, unflatten_state

__all__ = ["STATUSES", "CheckReport", "Problem", "RebuildReport", "Run", "RunLocked",
           "RunStore", "StoreError", "config_hash", "flatten_state", "unflatten_state"]
