"""Continual learning: protocols (sequences of experiences), methods that fight forgetting,
and the metrics of the accuracy matrix.

Public API: `ContinualConfig`, `train_continual`, `run_continual`, `build_protocol`,
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
from seqmem.continual.run import (
    ContinualConfig,
    load_continual_config,
    run_continual,
    train_continual,
)

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
    "forgetting",
    "forward_transfer",
    "learning_curve_area",
    "load_continual_config",
    "run_continual",
    "summarize",
    "train_continual",
]
