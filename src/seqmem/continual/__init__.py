"""Continual learning: protocols (sequences of experiences), methods that fight forgetting,
and the metrics of the accuracy matrix.

Public API: `ContinualConfig`, `fit_continual` (the loop; `seqmem.build.build_continual`
makes its protocol and method, `seqmem.engine` runs it as a job), `build_protocol`,
`build_method`, `METHODS`, `PROTOCOLS`, and the metrics `average_accuracy`,
`backward_transfer`, `forward_transfer`, `forgetting`, `learning_curve_area`, `summarize`.
"""

from seqmem.continual.methods import METHODS, ReservoirBuffer, build_method
from seqmem.continual.metrics import (
    average_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
    learning_curve_area,
    summarize,
)
from seqmem.continual.protocols import PROTOCOLS, Protocol, build_protocol
from seqmem.continual.config import ContinualConfig
from seqmem.continual.loop import fit_continual

__all__ = [
    "METHODS",
    "PROTOCOLS",
    "ContinualConfig",
    "Protocol",
    "ReservoirBuffer",
    "average_accuracy",
    "backward_transfer",
    "build_method",
    "build_protocol",
    "fit_continual",
    "forgetting",
    "forward_transfer",
    "learning_curve_area",
    "summarize",
]
