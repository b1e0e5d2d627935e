"""Learning-rate schedules: the multiplier of the base learning rate at an update step.

Pure functions of the step, so that a schedule is tested against its formula and plotted
without training anything.
"""

from __future__ import annotations

import math

from seqmem.errors import check_choice

SCHEDULES = ("constant", "cosine")


def lr_factor(schedule: str, step: int, *, warmup_steps: int = 0, total_steps: int = 1) -> float:
    """The multiplier at update `step` (0-based): a linear warm-up over `warmup_steps`, then
    `constant` (1) or `cosine`: 0.5 (1 + cos(pi * s / S)) with s the steps after the warm-up
    and S = total_steps - warmup_steps, reaching 0 at `total_steps` and staying there."""
    check_choice("schedule", schedule, SCHEDULES)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    frac = min((step - warmup_steps) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * frac))
