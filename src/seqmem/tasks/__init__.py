"""Tasks: seeded generators of batches (inputs, per-head targets, mask, meta).

Public API: `build(name, **kw)`, `names()`, `get(name)`, `register(name)`,
`hyperparameters(cls)`, `Task`, `Batch`. See `seqmem.tasks.base` for the contract.
"""

from seqmem.tasks import (  # noqa: F401  (registers the tasks)
    digits,
    dynamics,
    flagship,
    listops,
    neurogym_task,
    recall,
    state_tracking,
)
from seqmem.tasks.base import Batch, Task, build, get, hyperparameters, names, register

__all__ = ["Batch", "Task", "build", "get", "hyperparameters", "names", "register"]
