"""Tasks: seeded generators of batches (inputs, per-head targets, mask, meta).

Public API: `build(name, **kw)`, `names()`, `get(name)`, `register(name)`,
`hyperparameters(cls)`, `examples(name, options)`, `Task`, `Batch`. See `seqmem.tasks.base`
for the contract.
"""

import torch

from seqmem.errors import check_int
from seqmem.tasks import (  # noqa: F401  (registers the tasks)
    digits,
    dynamics,
    flagship,
    grid,
    listops,
    neurogym_task,
    recall,
    state_tracking,
)
from seqmem.tasks.base import Batch, Task, build, get, hyperparameters, names, register


def examples(name: str, options: dict, n: int = 3, seed: int = 0) -> tuple[str, str, list[str]]:
    """(the task's repr, the first line of its docstring, n examples rendered as text with
    the supervised targets marked) for the task `name` with `options`, from one batch drawn
    with `seed` (`seqmem show-task`)."""
    check_int("the number of examples (--examples)", n)
    task = build(name, **options)
    batch = task.sample(n, generator=torch.Generator().manual_seed(seed))
    doc = (type(task).__doc__ or "").strip().splitlines()
    return repr(task), doc[0] if doc else "", [task.render(batch, i) for i in range(n)]


__all__ = ["Batch", "Task", "build", "examples", "get", "hyperparameters", "names", "register"]
