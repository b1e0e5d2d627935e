"""Mixers: causal sequence maps (b, t, d) -> (b, t, d) with an explicit state.

Public API: `build(name, d_model, **kw)`, `names()`, `get(name)`, `register(name)`, `Mixer`.
"""

from seqmem.mixers import (  # noqa: F401  (registers the mixers)
    alrnn,
    attention,
    baselines,
    chimera,
    classic,
    conv,
    convs5,
    delta,
    grid,
    leaky,
    lightnet,
    lightnet2d,
    linear_attention,
    mamba,
    memory,
    plrnn,
    plstm,
    rat,
    s4,
    ssm,
    titans,
)
from seqmem.mixers.base import Mixer, State, build, get, hyperparameters, names, register, step_loop
from seqmem.mixers.grid import (  # noqa: F401  (the 2-D mixers' registry)
    Mixer2D,
    build_2d,
    every_name,
    is_2d,
    lookup,
    names_2d,
)
from seqmem.mixers.hf import from_hf as from_hf  # transformers layers -> seqmem mixers

__all__ = ["Mixer", "State", "build", "get", "hyperparameters", "names", "register", "step_loop"]
