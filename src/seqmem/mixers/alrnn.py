"""The almost-linear RNN (AL-RNN; Brenner, Hemmer, Monfared & Durstewitz 2024, "Almost-Linear
RNNs Yield Highly Interpretable Symbolic Codes in Dynamical Systems Reconstruction", NeurIPS),
with an input:

    z_t = A z_{t-1} + W Phi*(z_{t-1}) + h + C s_t,   Phi* = ReLU on the last P of the M units

A diagonal, W (M x M), h a bias, C the input matrix. The paper's model is read out by the
identity observation of its first N (linear) units, x_t = z_t[:N]: seqmem's model builder
fixes the regression head of an al_rnn model to that read-out (`observation = "identity"`,
see `seqmem.train.gtf.set_identity_observation`). Within each of the 2^P subregions (the
sign pattern of the P ReLU units) the map is linear: `subregion` gives the symbol of a state,
the `symbolic` analysis the symbolic code of a trajectory and its transition graph.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from seqmem.errors import SeqmemError, check_int
from seqmem.mixers.base import Mixer, register
from seqmem.mixers.parts import DiagonalLatent, NewtonForm
from seqmem.ops.alrnn import alrnn_recurrent, alrnn_step, alrnn_subregion


@register("al_rnn")
class ALRNN(NewtonForm, DiagonalLatent, Mixer):
    """AL-RNN: z_t = A z_{t-1} + W Phi*(z_{t-1}) + h + C s_t, Phi* a ReLU on the last P units
    only (Brenner et al. 2024).

    Args:
        d_model: latent units M (input and output width); the output is z_t.
        n_relu: P, the number of ReLU units (the last P of the M; the first M - P are
            linear); 1 <= P <= M. The map has 2^P linear subregions.
        input_proj: learn C (M x d_model); if False, C is the identity (the model's encoder
            plays C).
        a_init: (low, high): the diagonal of A is initialised U(low, high).

    seqmem's initialisation (the paper's code differs in detail): A ~ U(0.5, 0.95),
    W ~ U(-1/sqrt M, 1/sqrt M) / 2, h = 0, C as torch's Linear. The model's read-out is the
    identity on the first N units (N = the task's output channels; keep N <= M - P so that
    the read-out units are linear, as in the paper). Modes: "recurrent" (the loop) and
    "newton" (all steps at once by Newton iterations; the map is piecewise linear, so they
    end once the subregions are right).
    """

    modes = ("recurrent", "newton")
    observation = "identity"  # the paper's read-out: x_t = z_t[:N]
    latent_state = True  # the state is the latent z and the output (latent teacher forcing)

    def __init__(self, d_model: int, *, n_relu: int = 2, input_proj: bool = True,
                 a_init: tuple[float, float] = (0.5, 0.95)):
        super().__init__(d_model)
        P = check_int("al_rnn: n_relu", n_relu)
        if d_model < P:
            raise SeqmemError(f"al_rnn: n_relu must be between 1 and d_model ({d_model}), got "
                              f"{n_relu}")
        try:
            lo, hi = (float(v) for v in a_init)
        except (TypeError, ValueError):
            lo, hi = math.nan, math.nan  # rejected below
        if not (-1.0 < lo <= hi < 1.0):
            raise SeqmemError(f"a_init must be (low, high) with -1 < low <= high < 1, got "
                              f"{a_init}")
        self.n_relu = P
        k = 1 / math.sqrt(d_model)
        self.A = nn.Parameter(torch.empty(d_model).uniform_(lo, hi))  # (M,) the diagonal
        self.W = nn.Parameter(torch.empty(d_model, d_model).uniform_(-k, k) / 2)  # (M, M)
        self.h = nn.Parameter(torch.zeros(d_model))  # (M,)
        self.C = nn.Linear(d_model, d_model, bias=False) if input_proj else None

    def drive(self, x: Tensor) -> Tensor:
        """Input drive C s for s (..., d_model)."""
        return self.C(x) if self.C is not None else x

    def _cell(self, u_t: Tensor, z: Tensor) -> Tensor:
        return alrnn_step(u_t, z, self.A, self.W, self.h, self.n_relu)

    def _forward(self, x, state, mode, chunk_size):
        if mode == "newton":
            return self._newton(x, state)[:2]
        return alrnn_recurrent(self.drive(x), state, self.A, self.W, self.h, self.n_relu)

    def newton_system(self, x, state):
        return self._cell, self.drive(x), state

    def _step(self, x_t, state):
        z = self._cell(self.drive(x_t), state)
        return z, z

    def subregion(self, z: Tensor) -> Tensor:
        """The subregion symbol of states z (..., M): bit i set where ReLU unit M - P + i is
        positive (`seqmem.ops.alrnn.alrnn_subregion`), long (...)."""
        return alrnn_subregion(z, self.n_relu)

    def extra_repr(self):
        return f"d_model={self.d_model}, n_relu={self.n_relu}"
