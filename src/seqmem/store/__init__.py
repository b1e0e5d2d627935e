"""The run store: a folder per run and one SQLite database indexing them."""

from seqmem.store.db import STATUSES, RunStore, config_hash
from seqmem.store.run import Run
from seqmem.store.state import flatten_state, unflatten_state

__all__ = ["STATUSES", "Run", "RunStore", "config_hash", "flatten_state", "unflatten_state"]
