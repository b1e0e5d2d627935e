"""Classic RNNs under the mixer contract: Elman, GRU and LSTM.

Parameters follow torch.nn.RNN / GRU / LSTM (same names, shapes, gate order and
initialisation U(-1/sqrt(d), 1/sqrt(d))), so weights can be copied across and the outputs
match. Timescales come from the gates: a gate g that keeps a fraction g of the state per step
gives a memory time constant 1 / (1 - g) steps (LSTM: forget gate f; GRU: update gate z),
averaged over a probe input.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmem.errors import check_choice
from seqmem.mixers.base import Mixer, register
from seqmem.mixers.parts import NewtonForm
from seqmem.mixers.recurrent_init import check_init, init_recurrent_
from seqmem.ops.loops import float32_recurrence
from seqmem.ops.rnn import (
    LSTMState,
    elman_recurrent,
    elman_step,
    gru_recurrent,
    gru_step,
    lstm_recurrent,
    lstm_step,
)

PROBE_BATCH, PROBE_STEPS, PROBE_SEED = 64, 200, 0
# torch's fused LSTM kernel, run in float32 under autocast as every recurrence
fused_lstm = float32_recurrence(torch.lstm)


class _TorchLikeRNN(Mixer):
    """Shared parameters of the torch.nn-style RNNs: W_ih (g d, d), W_hh (g d, d), biases."""

    n_gates = 1
    modes = ("recurrent",)

    def __init__(self, d_model: int, *, bias: bool = True, init: str = "default",
                 init_gain: float = 1.0, init_rank: int | None = None, init_noise: float = 0.0):
        super().__init__(d_model)
        init_options = check_init(self.name, d_model, init, init_gain, init_rank, init_noise)
        g, d, k = self.n_gates, d_model, 1 / math.sqrt(d_model)
        self.weight_ih = nn.Parameter(torch.empty(g * d, d).uniform_(-k, k))
        self.weight_hh = nn.Parameter(torch.empty(g * d, d).uniform_(-k, k))
        init_recurrent_(self.weight_hh, **init_options)  # each gate's d x d block on its own
        self.bias_ih = nn.Parameter(torch.empty(g * d).uniform_(-k, k)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(g * d).uniform_(-k, k)) if bias else None

    def recurrent_weight(self) -> Tensor:
        """W_hh (g d, d): the gates' recurrent blocks stacked, as torch.nn orders them."""
        return self.weight_hh

    def drive(self, x: Tensor, *, fold_hh: bool = False) -> Tensor:
        """W_ih x + b_ih (..., g d), in one product; with `fold_hh`, b_hh is added too (where
        it enters the gates additively, it need not be added at every step)."""
        b = self.bias_ih
        if b is not None and fold_hh:
            b = b + self.bias_hh
        return F.linear(x, self.weight_ih, b)

    def _probe_input(self) -> Tensor:
        gen = torch.Generator().manual_seed(PROBE_SEED)
        return torch.randn(PROBE_BATCH, PROBE_STEPS, self.d_model, generator=gen).to(
            self.weight_hh
        )

    def init_state(self, batch_size, *, device=None, dtype=None):
        """The zero state h (b, d_model) (the LSTM's is a pair)."""
        return torch.zeros(batch_size, self.d_model, **self.state_options(device, dtype))

    def state_size(self):
        return self.d_model

    def load_torch(self, module: nn.RNNBase) -> None:
        """Copy the weights of a one-layer torch.nn.RNN / GRU / LSTM of the same size."""
        with torch.no_grad():
            self.weight_ih.copy_(module.weight_ih_l0)
            self.weight_hh.copy_(module.weight_hh_l0)
            if self.bias_ih is not None:
                self.bias_ih.copy_(module.bias_ih_l0)
                self.bias_hh.copy_(module.bias_hh_l0)


@register("elman")
class Elman(_TorchLikeRNN):
    """Elman RNN (Elman 1990), as torch.nn.RNN: h_t = phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).

    Args:
        d_model: hidden width (= input width).
        phi: "tanh" (default) or "relu".
        bias: learn b_ih and b_hh.
        init: initial W_hh, per gate block: "default" (U(-1/sqrt(d), 1/sqrt(d)) times
            init_gain), "normal" (N(0, init_gain^2 / d)) or "orthogonal" (W W^T =
            init_gain^2 I) (`seqmem.mixers.recurrent_init`).
        init_gain: the scale g of the initial W_hh (small: rich learning, large: lazy).
        init_rank: if given, each gate block of W_hh starts as a rank-r matrix (sum of r outer
            products, Frobenius norm g sqrt(d)); None: full rank. After Liu et al. 2023.
        init_noise: full-rank N(0, 1/d) noise added to the rank-r blocks (times init_gain).
    """

    recipe_optimizer: ClassVar[str | None] = "sgd"

    n_gates = 1

    def __init__(self, d_model: int, *, phi: str = "tanh", bias: bool = True,
                 init: str = "default", init_gain: float = 1.0, init_rank: int | None = None,
                 init_noise: float = 0.0):
        super().__init__(d_model, bias=bias, init=init, init_gain=init_gain,
                         init_rank=init_rank, init_noise=init_noise)
        self.phi = check_choice("elman activation phi", phi, ("tanh", "relu"))

    def _forward(self, x, state, mode, chunk_size):
        return elman_recurrent(self.drive(x, fold_hh=True), state, self.weight_hh, None,
                               phi=self.phi)

    def _step(self, x_t, state):
        h = elman_step(self.drive(x_t), state, self.weight_hh, self.bias_hh, phi=self.phi)
        return h, h


@register("gru")
class GRU(NewtonForm, _TorchLikeRNN):
    """Gated recurrent unit (Cho et al. 2014), as torch.nn.GRU.

    h_t = (1 - z_t) n_t + z_t h_{t-1}; the update gate z keeps a fraction z of the state, so
    the unit timescale is 1 / (1 - z), averaged over a probe input (`timescales`).

    Args: as `elman`
    """

    n_gates = 3

    def __init__(self, d_model: int, *, bias: bool = True, init: str = "default",
                 init_gain: float = 1.0, init_rank: int | None = None, init_noise: float = 0.0):
        super().__init__(d_model, bias=bias, init=init, init_gain=init_gain,
                         init_rank=init_rank, init_noise=init_noise)

    modes = ("recurrent", "newton")  # newton: all steps at once by Newton iterations

    def _forward(self, x, state, mode, chunk_size):
        if mode == "newton":
            return self._newton(x, state)[:2]
        y, h, _ = gru_recurrent(self.drive(x), state, self.weight_hh, self.bias_hh)
        return y, h

    def newton_system(self, x, state):
        def cell(u_t, h):
            return gru_step(u_t, h, self.weight_hh, self.bias_hh)[0]

        return cell, self.drive(x), state

    def _step(self, x_t, state):
        h, _ = gru_step(self.drive(x_t), state, self.weight_hh, self.bias_hh)
        return h, h

    @torch.no_grad()
    def timescales(self, probe: Tensor | None = None) -> Tensor:
        """Mean over a probe input (b, t, d) of 1 / (1 - z) per unit (default: N(0, 1) noise)."""
        x = self._probe_input() if probe is None else probe
        _, _, z = gru_recurrent(self.drive(x), self.init_state(x.shape[0], dtype=x.dtype),
                                self.weight_hh, self.bias_hh, gates=True)
        return (1 / (1 - z).clamp_min(1e-6)).mean(dim=(0, 1))


@register("lstm")
class LSTM(NewtonForm, _TorchLikeRNN):
    """Long short-term memory (Hochreiter & Schmidhuber 1997), as torch.nn.LSTM.

    State (h, c); c_t = f_t c_{t-1} + i_t g_t. The unit timescale is 1 / (1 - f), averaged over
    a probe input (`timescales`), as in the flagship paper's LSTM analysis. The output is h_t.

    Args: as `elman`
    """

    n_gates = 4

    def __init__(self, d_model: int, *, bias: bool = True, init: str = "default",
                 init_gain: float = 1.0, init_rank: int | None = None, init_noise: float = 0.0):
        super().__init__(d_model, bias=bias, init=init, init_gain=init_gain,
                         init_rank=init_rank, init_noise=init_noise)

    # fused: PyTorch's own LSTM kernel (oneDNN on CPU) on these parameters, the training
    # default; recurrent: seqmem's loop with its hand-written backward; newton: all steps at
    # once by Newton iterations
    modes = ("fused", "recurrent", "newton")

    def _forward(self, x, state, mode, chunk_size):
        if mode == "fused" and x.shape[1]:
            params = [self.weight_ih, self.weight_hh]
            if self.bias_ih is not None:
                params += [self.bias_ih, self.bias_hh]
            # torch.lstm checks no sizes (a mis-sized state crashes the process or reads past
            # its memory): the state was checked against init_state by `forward`
            h0, c0 = state
            y, h, c = fused_lstm(x, (h0[None], c0[None]), params, self.bias_ih is not None,
                                 1, 0.0, self.training, False, True)  # 1 layer, batch first
            return y, LSTMState(h[0], c[0])
        if mode == "newton":
            return self._newton(x, state)[:2]
        y, state, _ = lstm_recurrent(self.drive(x, fold_hh=True), state, self.weight_hh, None)
        return y, state

    def newton_system(self, x, state):
        """Newton iterates on one state vector s = [h, c] of size 2 d_model."""
        d = self.d_model

        def cell(u_t, s):
            st, _ = lstm_step(u_t, LSTMState(s[:, :d], s[:, d:]), self.weight_hh, self.bias_hh)
            return torch.cat([st.h, st.c], dim=-1)

        return cell, self.drive(x), torch.cat([state[0], state[1]], dim=-1)

    def newton_result(self, H, h_T):
        d = self.d_model
        return H[..., :d], LSTMState(h_T[:, :d], h_T[:, d:])

    def _step(self, x_t, state):
        state, _ = lstm_step(self.drive(x_t), state, self.weight_hh, self.bias_hh)
        return state.h, state

    def init_state(self, batch_size, *, device=None, dtype=None):
        z = super().init_state(batch_size, device=device, dtype=dtype)
        return LSTMState(z, z.clone())

    def state_size(self):
        return 2 * self.d_model

    @torch.no_grad()
    def timescales(self, probe: Tensor | None = None) -> Tensor:
        """Mean over a probe input (b, t, d) of 1 / (1 - f) per unit (default: N(0, 1) noise)."""
        x = self._probe_input() if probe is None else probe
        _, _, f = lstm_recurrent(self.drive(x), self.init_state(x.shape[0], dtype=x.dtype),
                                 self.weight_hh, self.bias_hh, gates=True)
        return (1 / (1 - f).clamp_min(1e-6)).mean(dim=(0, 1))
