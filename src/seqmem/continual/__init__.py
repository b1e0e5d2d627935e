"""Continual learning: protocols (sequences of experiences), methods that fight forgetting,
and the metrics of the accuracy matrix.

Public API: `ContinualConfig`, `fit_continual` (the loop; `seqmem.build.build_continual`
makes its protocol and method, `seqmem.engine` runs it as a job), `build_protocol`,
`build_method`, `METHODS`, `PROTOCOLS`, the contract (`Protocol`, `Experience`, `Method`,
`experience_loss`) and its registries (`register_method`, `register_protocol`, see
`seqmem.continual.base`), and the metrics `average_accuracy`, `backward_transfer`,
`forward_transfer`, `forgetting`, `learning_curve_area`, `summarize`.
"""

from seqmem.continual.base import (
    Experience,
    Method,
    Protocol,
    experience_loss,
    register_method,
    register_protocol,
)
from seqmem.continual.config import ContinualConfig
from seqmem.continual.loop import fit_continual
from seqmem.continual.methods import METHODS, ReservoirBuffer, build_method
from seqmem.continual.metrics import (
    average_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
    learning_curve_area,
    summarize,
)
from seqmem.continual.protocols import PROTOCOLS, build_protocol

__all__ = [
    "METHODS",
    "PROTOCOLS",
    "ContinualConfig",
    "Experience",
    "Method",
    "Protocol",
    "ReservoirBuffer",
    "average_accuracy",
    "backward_transfer",
    "build_method",
    "build_protocol",
    "experience_loss",
    "fit_continual",
    "forgetting",
    "forward_transfer",
    "learning_curve_area",
    "register_method",
    "register_protocol",
    "summarize",
]
