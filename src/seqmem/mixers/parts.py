"""Parts shared by several mixers, written once: the short causal convolution with its carried
state, head splitting, RMS norms, the dt and A initialisations of selective state spaces, the
Newton form of nonlinear RNNs, timescales spread over channels, and the checks of the
hyperparameters that several mixers take.

    ShortConv        y_t[c] = bias[c] + sum_j weight[c, j] x_{t-k+1+j}[c]   (k = conv_size)
    rms_norm         o / sqrt(mean(o^2) + eps) * weight  over the last axis
    gated_rms_norm   rms_norm(o) * SiLU(gate)                  (Gated DeltaNet's output norm)
    dt_bias_init     softplus^-1(dt), dt log-uniform in [dt_min, dt_max]   (Mamba)
    A_log_init       log A, A ~ U(1, 16)                                   (Mamba-2)
    NewtonForm       the "newton" mode: h_1..h_T of h_t = f(h_{t-1}, u_t) solved by Newton
                     iterations (DEER, Lim et al. 2024), with its diagnostics `NewtonInfo`

Names follow one glossary: `conv_size` is the width (taps) of a short convolution, `n_heads`
the heads, `d_head` / `d_k` / `d_v` a head's widths, `norm_eps` a norm's epsilon.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmem.errors import SeqmemError, check_int
from seqmem.ops.attention import is_filled
from seqmem.ops.conv import short_conv, short_conv_init_state, short_conv_step
from seqmem.ops.newton import newton_recurrent

MAX_TIMESCALE = 1e12  # timescales() caps a decay indistinguishable from 1 here


# ---- hyperparameter checks ------------------------------------------------------------------
def check_heads(name: str, d_model: int, n_heads: int) -> int:
    """The head width d_model // n_heads, or a one-line SeqmemError unless n_heads is a
    positive divisor of d_model."""
    if not isinstance(n_heads, int) or isinstance(n_heads, bool) or n_heads < 1 \
            or d_model % n_heads:
        raise SeqmemError(f"{name}: n_heads must be a positive divisor of d_model={d_model}, "
                          f"got {n_heads!r}")
    return d_model // n_heads


def head_dims(name: str, d_model: int, n_heads: int, expand_k: float, expand_v: float
              ) -> tuple[int, int]:
    """(d_k, d_v) per head: expand_k * d_model and expand_v * d_model split over n_heads, each
    a whole positive number, or a one-line SeqmemError."""
    check_int(f"{name}: n_heads", n_heads)
    dims = []
    for what, expand in (("expand_k", expand_k), ("expand_v", expand_v)):
        width = float(expand) * d_model if isinstance(expand, int | float) else float("nan")
        if not (width >= n_heads and width == int(width) and int(width) % n_heads == 0):
            raise SeqmemError(f"{name}: {what} * d_model must be a positive multiple of "
                              f"n_heads={n_heads}, got {what}={expand!r} with d_model={d_model}")
        dims.append(int(width) // n_heads)
    return dims[0], dims[1]


def check_conv_size(name: str, conv_size: int) -> int:
    """conv_size, the width of a short convolution, if it is an integer >= 2."""
    return check_int(f"{name}: conv_size", conv_size, low=2)


def check_eps(name: str, eps: float) -> float:
    """A norm's epsilon as a float, if it is a number in (0, 1)."""
    if not (isinstance(eps, int | float) and 0 < eps < 1):
        raise SeqmemError(f"{name}: norm_eps must be in (0, 1), got {eps!r}")
    return float(eps)


def chunk_phase(name: str, log_m: Tensor) -> int:
    """Tokens already in the current chunk, read from a chunk buffer's log-weights (b, n): the
    filled slots, which must be the same for every sequence of the batch."""
    filled = is_filled(log_m).sum(dim=-1).tolist()  # (b,)
    if len(set(filled)) > 1:
        raise SeqmemError(f"{name}: the sequences of a batch must be at the same position in "
                          f"their chunk; got positions {sorted(set(filled))}")
    return filled[0] if filled else 0


# ---- heads and norms ------------------------------------------------------------------------
def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """(..., h e) -> (..., h, e), heads major (a view; no einops parsing per call)."""
    return x.unflatten(-1, (n_heads, x.shape[-1] // n_heads))


def merge_heads(x: Tensor) -> Tensor:
    """(..., h, e) -> (..., h e), the inverse of `split_heads`."""
    return x.flatten(-2)


def rms_norm(o: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm (Zhang & Sennrich 2019) over the last axis: o / sqrt(mean(o^2) + eps) * weight,
    o (..., d) -> (..., d)."""
    return o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + eps) * weight


def gated_rms_norm(o: Tensor, weight: Tensor, gate: Tensor, eps: float) -> Tensor:
    """rms_norm(o) * SiLU(gate), the gated output norm of Gated DeltaNet (and of the layers
    that borrow it): o, gate (..., d) -> (..., d)."""
    return rms_norm(o, weight, eps) * F.silu(gate)


def spread_over_channels(ts: Tensor, d_model: int) -> Tensor:
    """Timescales of n head-major channels (n,) spread over d_model head-major channels:
    channel c takes entry floor(c n / d_model) (so a head's channels keep its head), capped at
    MAX_TIMESCALE."""
    index = torch.arange(d_model, device=ts.device) * ts.shape[0] // d_model  # (d_model,)
    return ts[index].clamp(max=MAX_TIMESCALE)


# ---- initialisations ------------------------------------------------------------------------
def dt_bias_init(n: int, *, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 dt_floor: float = 1e-4) -> Tensor:
    """Mamba's dt initialisation (Gu & Dao 2023; also Mamba-2, Gated DeltaNet, MoM): dt
    log-uniform in [dt_min, dt_max], floored at dt_floor, stored as the bias b with
    softplus(b) = dt, i.e. b = dt + log(1 - exp(-dt)). Returns (n,)."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_floor)
    return dt + torch.log(-torch.expm1(-dt))


def A_log_init(n: int, *, low: float = 1.0, high: float = 16.0) -> Tensor:
    """Mamba-2's decay-rate initialisation (also Gated DeltaNet's and MoM's): A ~ U(low, high)
    per head, stored as log A (the decay is exp(-exp(A_log) dt)). Returns (n,)."""
    return torch.log(torch.empty(n).uniform_(low, high))


# ---- the short causal convolution -----------------------------------------------------------
class ShortConv(nn.Module):
    """The short causal depthwise convolution of Mamba, DeltaNet and their relatives, with its
    carried state (`seqmem.ops.conv.short_conv`):

        y_t[c] = bias[c] + sum_{j=0}^{k-1} weight[c, j] x_{t-k+1+j}[c],   k = conv_size,

    the state being the last k - 1 inputs (b, k - 1, channels), zeros at the start of a
    sequence. weight (channels, conv_size) and bias (channels,) are initialised as
    torch.nn.Conv1d's, U(-1/sqrt(k), 1/sqrt(k)).

    Args:
        channels: convolved channels.
        conv_size: the kernel width k (>= 1).
        bias: learn a bias.
    """

    def __init__(self, channels: int, conv_size: int, *, bias: bool = False):
        super().__init__()
        self.channels = check_int("short convolution: channels", channels)
        self.conv_size = check_int("short convolution: conv_size", conv_size)
        bound = 1 / math.sqrt(conv_size)  # torch.nn.Conv1d's default range
        self.weight = nn.Parameter(torch.empty(channels, conv_size).uniform_(-bound, bound))
        if bias:
            self.bias = nn.Parameter(torch.empty(channels).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (b, t, channels), state (b, k - 1, channels) or None (zeros) -> y (b, t,
        channels), the final state; t = 0 gives an empty y and keeps the state."""
        return short_conv(x, self.weight, self.bias, state)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One token: x_t (b, channels), state -> y_t (b, channels), the next state."""
        return short_conv_step(x_t, self.weight, self.bias, state)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> Tensor:
        """The zero state (b, k - 1, channels), on the weight's device and dtype by default."""
        return short_conv_init_state(batch_size, self.channels, self.conv_size,
                                     device=device or self.weight.device,
                                     dtype=dtype or self.weight.dtype)

    def state_size(self) -> int:
        """Floats of state per sequence: (k - 1) channels."""
        return (self.conv_size - 1) * self.channels

    def extra_repr(self) -> str:
        return f"channels={self.channels}, conv_size={self.conv_size}, bias={self.bias is not None}"


# the names a mixer's short-convolution parameters had before they moved into a `ShortConv`
# named `conv`: {old state_dict key: new key}, for `Mixer.legacy_names`
SHORT_CONV_LEGACY_NAMES = {"conv_weight": "conv.weight", "conv_bias": "conv.bias"}


# ---- the Newton form ------------------------------------------------------------------------
class NewtonInfo(NamedTuple):
    """Diagnostics of one Newton-mode forward: the Newton iterations run (each one parallel
    linear scan; at most t + 1, far fewer once the recurrence contracts)."""

    iterations: int


Cell = Callable[[Tensor, Tensor], Tensor]  # (u_t (b, k), h (b, n)) -> h_t (b, n)


TAU_MAX = 1e6  # timescale reported for |a| >= 1 (a unit that does not decay)


class DiagonalLatent:
    """Mixin of the latent-state RNNs with a diagonal linear part A (plrnn, al_rnn): the zero
    state z (b, d_model), its size, and per unit the decay time of the linear part alone."""

    def init_state(self, batch_size, *, device=None, dtype=None):
        return torch.zeros(batch_size, self.d_model, **self.state_options(device, dtype))

    def state_size(self):
        return self.d_model

    def timescales(self):
        """-1 / log|a| per latent unit, the decay time of its linear part alone, in steps;
        TAU_MAX where |a| >= 1 - 1e-6 (no decay)."""
        a = self.A.detach().abs().clamp(1e-12, 1 - 1e-6)
        return (-1 / torch.log(a)).clamp(max=TAU_MAX)


class NewtonForm:
    """The "newton" mode of a nonlinear RNN mixer: all states h_1..h_T of h_t = f(h_{t-1}, u_t)
    at once, as the root of h_t - f(h_{t-1}, u_t) = 0 found by Newton's method, each iteration
    one parallel linear scan (DEER, Lim et al. 2024; ParaRNN, Danieli et al. 2025;
    `seqmem.ops.newton.newton_recurrent`). The result equals the step loop to the tolerance,
    and its gradients are the step loop's.

    A mixer using it lists "newton" in its modes, implements `newton_system` (and
    `newton_result` if its state is not one vector) and in `_forward` returns
    `self._newton(x, state)[:2]` for mode "newton". `newton` is that forward with its
    diagnostics: nothing is stored on the module.
    """

    def newton_system(self, x: Tensor, state: Any) -> tuple[Cell, Tensor, Tensor]:
        """(cell, u, h0): the cell h_t = cell(u_t, h_{t-1}) on one state vector, the drive
        u (b, t, k) computed from x (b, t, d_model) for all steps, and h0 (b, n) from state."""
        raise NotImplementedError

    def newton_result(self, H: Tensor, h_T: Tensor) -> tuple[Tensor, Any]:
        """(y, final state) from every state vector H (b, t, n) and the last h_T (b, n); by
        default both as they are (the output is the state)."""
        return H, h_T

    def newton(self, x: Tensor, state: Any = None, *, tol: float | None = None,
               max_iter: int | None = None) -> tuple[Tensor, Any, NewtonInfo]:
        """The "newton" mode with its diagnostics: x (b, t, d_model), state (None: the initial
        state) -> y (b, t, d_model), the final state, `NewtonInfo`. tol, max_iter: as
        `newton_recurrent` (default: its relative tolerance of the dtype, t + 1 iterations)."""
        self.check_input(x, ndim=3)
        state = self._given_state(x, state)
        return self._newton(x, state, tol=tol, max_iter=max_iter)

    def _newton(self, x: Tensor, state: Any, *, tol: float | None = None,
                max_iter: int | None = None) -> tuple[Tensor, Any, NewtonInfo]:
        cell, u, h0 = self.newton_system(x, state)
        H, h_T, iterations = newton_recurrent(cell, u, h0, tol=tol, max_iter=max_iter)
        y, state = self.newton_result(H, h_T)
        return y, state, NewtonInfo(iterations)
