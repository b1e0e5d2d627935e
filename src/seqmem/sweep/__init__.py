"""Sweeps: grids of runs identified by config hash, run on Ray or local processes, resumable;
two-phase sweeps tune on one stream and evaluate the frozen choice on another."""

from seqmem.sweep.driver import (
    SweepResult,
    TwoPhaseResult,
    plan_sweep,
    run_sweep,
    run_two_phase,
)
from seqmem.sweep.spec import SweepSpec, expand, phase_spec, read_sweep

__all__ = ["SweepResult", "SweepSpec", "TwoPhaseResult", "expand", "phase_spec", "plan_sweep",
           "read_sweep", "run_sweep", "run_two_phase"]
