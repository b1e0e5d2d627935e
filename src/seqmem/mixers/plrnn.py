"""The shallow piecewise-linear RNN (shPLRNN; Hess, Monfared, Brenner & Durstewitz 2023,
"Generalized Teacher Forcing for Learning Chaotic Dynamics", ICML), with an input:

    z_t = A z_{t-1} + W1 relu(W2 z_{t-1} + h2) + h1 + C s_t

A diagonal (the linear, "leaky" part of each latent unit), W2 (L x M) and W1 (M x L) a
one-hidden-layer ReLU network of width L, h1, h2 biases, C the input matrix, s_t the input.
The paper's model is autonomous (no input) and read out by an identity observation model on
its first N units; in seqmem the state z (M = d_model units) is the mixer's output and the
readout is the SequenceModel's head (see `seqmem.train.loop` for generalised teacher forcing).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmem.errors import SeqmemError, check_int
from seqmem.mixers.base import Mixer, register
from seqmem.mixers.parts import DiagonalLatent, NewtonForm
from seqmem.ops.alrnn import alrnn_subregion
from seqmem.ops.rnn import plrnn_recurrent, plrnn_step


@register("plrnn")
class PLRNN(NewtonForm, DiagonalLatent, Mixer):
    """Shallow PLRNN: z_t = A z_{t-1} + W1 relu(W2 z_{t-1} + h2) + h1 + C s_t (Hess et al. 2023).

    Args:
        d_model: latent units M (input and output width); the output is z_t.
        d_hidden: width L of the ReLU layer (default 2 * d_model).
        input_proj: learn C (M x d_model); if False, C is the identity (the model's encoder
            plays C).
        a_init: (low, high): the diagonal of A is initialised U(low, high).

    seqmem's initialisation (the paper's code differs in detail): A ~ U(0.5, 0.95), W2, h2
    ~ U(-1/sqrt M, 1/sqrt M), W1 ~ U(-1/sqrt L, 1/sqrt L) / 2, h1 = 0, C as torch's Linear.
    A is stored as is (unconstrained: entries may leave (-1, 1) in training).
    Modes: "recurrent" (the loop) and "newton" (all steps at once by Newton iterations; the
    recurrence is piecewise linear, so they end once the ReLU pattern is right).
    """

    modes = ("recurrent", "newton")
    latent_state = True  # the state is the latent z and the output (latent teacher forcing)

    def __init__(self, d_model: int, *, d_hidden: int | None = None, input_proj: bool = True,
                 a_init: tuple[float, float] = (0.5, 0.95)):
        super().__init__(d_model)
        L = check_int("plrnn: d_hidden (null: 2 d_model)",
                      2 * d_model if d_hidden is None else d_hidden)
        try:
            lo, hi = (float(v) for v in a_init)
        except (TypeError, ValueError):
            lo, hi = math.nan, math.nan  # rejected below
        if not (-1.0 < lo <= hi < 1.0):
            raise SeqmemError(f"a_init must be (low, high) with -1 < low <= high < 1, got "
                              f"{a_init}")
        self.d_hidden = L
        k_m, k_l = 1 / math.sqrt(d_model), 1 / math.sqrt(L)
        self.A = nn.Parameter(torch.empty(d_model).uniform_(lo, hi))  # (M,) the diagonal
        self.W2 = nn.Parameter(torch.empty(L, d_model).uniform_(-k_m, k_m))  # (L, M)
        self.h2 = nn.Parameter(torch.empty(L).uniform_(-k_m, k_m))  # (L,)
        self.W1 = nn.Parameter(torch.empty(d_model, L).uniform_(-k_l, k_l) / 2)  # (M, L)
        self.h1 = nn.Parameter(torch.zeros(d_model))  # (M,)
        self.C = nn.Linear(d_model, d_model, bias=False) if input_proj else None

    def drive(self, x: Tensor) -> Tensor:
        """Input drive C s for s (..., d_model)."""
        return self.C(x) if self.C is not None else x

    def _cell(self, u_t: Tensor, z: Tensor) -> Tensor:
        return plrnn_step(u_t, z, self.A, self.W1, self.W2, self.h1, self.h2)

    def _forward(self, x, state, mode, chunk_size):
        if mode == "newton":
            return self._newton(x, state)[:2]
        return plrnn_recurrent(self.drive(x), state, self.A, self.W1, self.W2, self.h1, self.h2)

    def newton_system(self, x, state):
        return self._cell, self.drive(x), state

    def _step(self, x_t, state):
        z = self._cell(self.drive(x_t), state)
        return z, z

    def subregion(self, z: Tensor) -> Tensor:
        """The linear subregion of states z (..., M): the sign pattern of the L hidden ReLU
        units W2 z + h2 as an integer (bit i: unit i positive), long (...); L <= 62."""
        return alrnn_subregion(F.linear(z, self.W2, self.h2), self.d_hidden)

    def extra_repr(self):
        return f"d_model={self.d_model}, d_hidden={self.d_hidden}"
