"""Reproductions: the field's headline findings, one command each (`seqmem reproduce NAME`),
with the paper's numbers beside ours. The registry and shared pieces are in
`seqmem.reproduce.base`; each finding is one module here that registers itself with
`@reproduction(...)` and is imported below (one line per finding)."""

from seqmem.reproduce.base import (
    REPRODUCTIONS,
    Outcome,
    Reproduction,
    SweepChanges,
    get,
    reproduction,
    run_experiment_sweep,
    run_reproduction,
    write_page,
)

# isort: split
from seqmem.reproduce import (
    continual_table,  # noqa: F401  (registers itself)
    flagship5,  # noqa: F401  (registers itself)
    gtf,  # noqa: F401  (registers itself)
    state_tracking,  # noqa: F401  (registers itself)
    zoology,  # noqa: F401  (registers itself)
)

__all__ = ["REPRODUCTIONS", "Outcome", "Reproduction", "SweepChanges", "get", "reproduction",
           "run_experiment_sweep", "run_reproduction", "write_page"]
