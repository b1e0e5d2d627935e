"""Baselines the tables of the field start from: a linear RNN and a model without recurrence.

- `linear`: the linear RNN h_t = W h_{t-1} + U x_t + b (an Elman RNN with the identity as its
  nonlinearity), whose memory is the spectrum of W: a mode with eigenvalue lambda decays as
  |lambda|^t, so its time constant is -1 / log |lambda| steps.
- `mlp`: a position-wise two-layer perceptron y_t = W_2 phi(W_1 x_t + b_1) + b_2, with no
  state at all (its state has zero floats): what a task can be solved with without memory.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmem.errors import SeqmemError, check_choice, check_int
from seqmem.mixers.base import Mixer, register
from seqmem.ops.loops import float32_recurrence


@float32_recurrence
def linear_rnn_loop(u: Tensor, h: Tensor, Wt: Tensor) -> tuple[Tensor, Tensor]:
    """h_t = h_{t-1} W^T + u_t for the drives u (b, t, d) from h (b, d): (every h_t (b, t, d),
    the last); in float32 under autocast, as every recurrence."""
    hs = []
    for u_t in u.unbind(1):
        h = torch.addmm(u_t, h, Wt)
        hs.append(h)
    return torch.stack(hs, dim=1), h


@register("linear")
class LinearRNN(Mixer):
    """Linear RNN h_t = W h_{t-1} + U x_t + b (Elman's with identity activation); y_t = h_t.

    Args:
        d_model: hidden width (= input width).
        spectral_radius: W is initialised orthogonal times this (below 1: every mode decays,
            with time constant -1 / log(spectral_radius) steps).
        bias: learn b.
    """

    modes: ClassVar[tuple[str, ...]] = ("recurrent",)

    def __init__(self, d_model: int, *, spectral_radius: float = 0.9, bias: bool = True):
        super().__init__(d_model)
        if isinstance(spectral_radius, bool) or not isinstance(spectral_radius, int | float) \
                or spectral_radius <= 0:
            raise SeqmemError(f"linear: spectral_radius must be a positive number, got "
                              f"{spectral_radius!r}")
        self.W = nn.Parameter(torch.empty(d_model, d_model))
        nn.init.orthogonal_(self.W)
        with torch.no_grad():
            self.W.mul_(spectral_radius)
        self.U = nn.Linear(d_model, d_model, bias=bias)

    def _step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        _, h = linear_rnn_loop(self.U(x_t)[:, None], state, self.W.T)  # (b, d)
        return h, h

    def _forward(self, x: Tensor, state: Tensor, mode: str, chunk_size: int):
        # the input drive of every step at once (b, t, d), then the loop
        return linear_rnn_loop(self.U(x), state, self.W.T)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> Tensor:
        return torch.zeros(batch_size, self.d_model, **self.state_options(device, dtype))

    def state_size(self) -> int:
        return self.d_model

    def timescales(self) -> Tensor:
        """-1 / log |lambda| of W's eigenvalues, sorted, one per mode (inf for |lambda| >= 1)."""
        mag = torch.linalg.eigvals(self.W.detach().double()).abs()
        tau = torch.where(mag < 1, -1.0 / torch.log(mag.clamp_min(1e-300)),
                          torch.full_like(mag, math.inf))
        return tau.sort().values.to(self.W.dtype)


@register("mlp")
class MLP(Mixer):
    """No recurrence: y_t = W_2 phi(W_1 x_t + b_1) + b_2 at every position; the state is empty.

    Args:
        d_model: input and output width.
        expand: hidden width = expand * d_model.
        phi: "gelu" (default), "relu" or "tanh".
    """

    modes: ClassVar[tuple[str, ...]] = ("parallel",)

    def __init__(self, d_model: int, *, expand: int = 2, phi: str = "gelu"):
        super().__init__(d_model)
        check_int("mlp: expand", expand)
        self.phi = check_choice("mlp activation phi", phi, ("gelu", "relu", "tanh"))
        self.fc1 = nn.Linear(d_model, expand * d_model)
        self.fc2 = nn.Linear(expand * d_model, d_model)

    def _mlp(self, x: Tensor) -> Tensor:
        act = {"gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh}[self.phi]
        return self.fc2(act(self.fc1(x)))

    def _step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        return self._mlp(x_t), state

    def _forward(self, x: Tensor, state: Tensor, mode: str, chunk_size: int):
        return self._mlp(x), state

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> Tensor:
        return torch.zeros(batch_size, 0, **self.state_options(device, dtype))  # (b, 0)

    def state_size(self) -> int:
        return 0
