"""The run store: a folder per run (config, metrics, checkpoints, summary) and one SQLite
database indexing them (see seqmem.store.db and seqmem.store.run)."""

from seqmem.store.db import STATUSES, RunStore, config_hash
from seqmem.store.run import Run
from seqmem.store.state import flatten_state, unflatten_state

__all__ = ["STATUSES", "Run", "RunStore", "config_hash", "flatten_state", "unflatten_state"]
