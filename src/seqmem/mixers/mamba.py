"""Mamba (Gu & Dao 2023) and Mamba-2 (Dao & Gu 2024): gated blocks around a selective state
space, computed by `seqmem.ops.selective.selective_scan` / `ssd`.

    Mamba:    x, z = W_in u;  x = SiLU(conv(x));  dt_raw, B, C = W_x x;  dt = softplus(W_dt dt_raw
              + b_dt);  h_t = exp(dt A) h_{t-1} + dt B_t x_t (per channel, d_state modes);
              y = (C_t h_t + D x) * SiLU(z);  out = W_out y
    Mamba-2:  z, x, B, C, dt_raw = W_in u;  x, B, C = SiLU(conv(x, B, C));
              dt = softplus(dt_raw + dt_bias) per head;  h_t = exp(dt A) h_{t-1} + dt x_t^T B_t
              (per head, (headdim, d_state) state, A a scalar per head);
              y = h_t C_t + D x;  out = W_out RMSNorm(y * SiLU(z))

With `negative_eigenvalues=True` the transition exp(dt A) in (0, 1] becomes 2 exp(dt A) - 1 in
(-1, 1] (Grazzi et al. 2025, "Unlocking State-Tracking in Linear RNNs Through Negative
Eigenvalues"): the state can flip sign, which lets the layer track parity.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from seqmem.errors import SeqmemError
from seqmem.mixers.base import Mixer, register
from seqmem.mixers.linear_attention import MAX_TIMESCALE, check_eps, rms_norm, spread_over_channels
from seqmem.ops.conv import short_conv, short_conv_init_state, short_conv_step
from seqmem.ops.selective import (
    selective_scan,
    selective_scan_signed,
    selective_scan_signed_step,
    selective_scan_step,
    ssd,
    ssd_signed,
    ssd_signed_step,
    ssd_step,
)


class MambaState(NamedTuple):
    """conv (b, d_conv - 1, conv width) the short convolution's last inputs; ssm the state
    space's state ((b, d_inner, d_state) for Mamba, (b, n_heads, headdim, d_state) for
    Mamba-2)."""

    conv: Tensor
    ssm: Tensor


def _positive_int(name: str, what: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SeqmemError(f"{name}: {what} must be a positive integer, got {value!r}")
    return value


def _dt_bias(n: int, dt_min: float = 1e-3, dt_max: float = 1e-1) -> Tensor:
    """Mamba's dt initialisation: dt log-uniform in [dt_min, dt_max] (floored at 1e-4), stored
    as the bias softplus^-1(dt) = dt + log(1 - exp(-dt))."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=1e-4)
    return dt + torch.log(-torch.expm1(-dt))


def _log_timescale(log_decay: Tensor, signed: bool) -> Tensor:
    """-1 / log|transition| for log decays dt A (<= 0): the e-folding time in steps, capped."""
    if signed:
        tiny = torch.finfo(log_decay.dtype).tiny
        log_decay = (2 * log_decay.exp() - 1).abs().clamp(min=tiny).log()
    return (-1 / log_decay.clamp(max=-1 / MAX_TIMESCALE)).clamp(max=MAX_TIMESCALE)


class _MambaBase(Mixer):
    """The plumbing shared by the two blocks: the short convolution over `d_xbc` channels."""

    def _conv_setup(self, d_xbc: int, d_conv: int) -> None:
        self.d_xbc = d_xbc
        bound = 1 / math.sqrt(d_conv)  # torch.nn.Conv1d's default range
        self.conv_weight = nn.Parameter(torch.empty(d_xbc, d_conv).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.empty(d_xbc).uniform_(-bound, bound))

    def _state_kw(self, device, dtype) -> dict:
        w = self.out_proj.weight
        return {"device": device or w.device, "dtype": dtype or w.dtype}


@register("mamba")
class Mamba(_MambaBase):
    """The Mamba block (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State
    Spaces"), see the module docstring.

    Args:
        d_model: model width.
        d_state: state size per channel (n).
        d_conv: width of the short causal convolution (>= 2).
        expand: inner width d_inner = expand * d_model.
        dt_rank: rank of the dt projection; None: ceil(d_model / 16).
        negative_eigenvalues: transitions 2 exp(dt A) - 1 in (-1, 1] (Grazzi et al. 2025).
    """

    modes = ("chunk", "recurrent")

    def __init__(self, d_model: int, *, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | None = None, negative_eigenvalues: bool = False):
        super().__init__(d_model)
        n = _positive_int("mamba", "d_state", d_state)
        if _positive_int("mamba", "d_conv", d_conv) < 2:
            raise SeqmemError(f"mamba: d_conv must be an integer >= 2, got {d_conv!r}")
        d_inner = d_model * _positive_int("mamba", "expand", expand)
        dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        self.dt_rank = _positive_int("mamba", "dt_rank", dt_rank)
        self.d_state, self.d_conv, self.d_inner = n, d_conv, d_inner
        self.negative_eigenvalues = bool(negative_eigenvalues)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)  # x, z
        self._conv_setup(d_inner, d_conv)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * n, bias=False)  # dt, B, C
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        bound = self.dt_rank ** -0.5
        with torch.no_grad():
            self.dt_proj.weight.uniform_(-bound, bound)
            self.dt_proj.bias.copy_(_dt_bias(d_inner))
        # S4D-real: A[d, n] = -(n + 1), stored as log(-A)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1.0)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def _scan_inputs(self, xz: Tensor, u: Tensor):
        """(x, delta, B, C, z) from the in-projection xz (..., 2 d_inner) and the convolved
        x u (..., d_inner)."""
        x = F.silu(u)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight)  # the bias goes in as delta_bias
        return x, delta, B, C, xz[..., self.d_inner:]

    def _forward(self, x, state, mode, chunk_size):
        xz = self.in_proj(x)  # (b, t, 2 d_inner)
        u, conv = short_conv(xz[..., :self.d_inner], self.conv_weight, self.conv_bias,
                             state.conv)  # (b, t, d_inner)
        xs, delta, B, C, z = self._scan_inputs(xz, u)
        scan = selective_scan_signed if self.negative_eigenvalues else selective_scan
        y, h = scan(xs, delta, -self.A_log.exp(), B, C, self.D, z, delta_bias=self.dt_proj.bias,
                    delta_softplus=True, state=state.ssm, mode=mode, chunk_size=chunk_size)
        return self.out_proj(y), MambaState(conv, h)

    def step(self, x_t, state):
        self.check_input(x_t, ndim=2)
        xz = self.in_proj(x_t)  # (b, 2 d_inner)
        u, conv = short_conv_step(xz[..., :self.d_inner], self.conv_weight, self.conv_bias,
                                  state.conv)
        xs, delta, B, C, z = self._scan_inputs(xz, u)
        step = selective_scan_signed_step if self.negative_eigenvalues else selective_scan_step
        y, h = step(xs, delta, -self.A_log.exp(), B, C, self.D, z,
                    delta_bias=self.dt_proj.bias, delta_softplus=True, state=state.ssm)
        return self.out_proj(y), MambaState(conv, h)

    def init_state(self, batch_size, *, device=None, dtype=None):
        kw = self._state_kw(device, dtype)
        return MambaState(short_conv_init_state(batch_size, self.d_inner, self.d_conv, **kw),
                          torch.zeros(batch_size, self.d_inner, self.d_state, **kw))

    def state_size(self):
        return (self.d_conv - 1) * self.d_inner + self.d_inner * self.d_state

    def timescales(self):
        """Per d_model channel: the e-folding time -1 / log|transition| of the slowest of the
        d_state modes of an inner channel, at zero input (dt = softplus(b_dt), the probe where
        x_proj contributes nothing), averaged over the `expand` consecutive inner channels of
        each d_model channel."""
        dt = F.softplus(self.dt_proj.bias.detach())  # (d_inner,)
        log_decay = dt[:, None] * -self.A_log.detach().exp()  # (d_inner, n)
        ts = _log_timescale(log_decay, self.negative_eigenvalues).amax(-1)  # (d_inner,)
        return ts.view(self.d_model, -1).mean(-1)

    def extra_repr(self):
        return (f"d_model={self.d_model}, d_state={self.d_state}, d_inner={self.d_inner}, "
                f"dt_rank={self.dt_rank}, negative_eigenvalues={self.negative_eigenvalues}")


@register("mamba2")
class Mamba2(_MambaBase):
    """The Mamba-2 block (Dao & Gu 2024, "Transformers are SSMs: Generalized Models and
    Efficient Algorithms Through Structured State Space Duality"), one group of B, C shared by
    the heads, see the module docstring.

    Args:
        d_model: model width.
        d_state: state size per head dimension (n).
        d_conv: width of the short causal convolution over x, B, C (>= 2).
        expand: inner width d_inner = expand * d_model.
        headdim: head dimension p; d_inner must be a multiple of it (n_heads = d_inner / p).
        negative_eigenvalues: transitions 2 exp(dt A) - 1 in (-1, 1] (Grazzi et al. 2025).
        norm_eps: epsilon of the gated RMSNorm.
    """

    modes = ("chunk", "quadratic", "recurrent")

    def __init__(self, d_model: int, *, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 headdim: int = 16, negative_eigenvalues: bool = False, norm_eps: float = 1e-5):
        super().__init__(d_model)
        n = _positive_int("mamba2", "d_state", d_state)
        if _positive_int("mamba2", "d_conv", d_conv) < 2:
            raise SeqmemError(f"mamba2: d_conv must be an integer >= 2, got {d_conv!r}")
        d_inner = d_model * _positive_int("mamba2", "expand", expand)
        p = _positive_int("mamba2", "headdim", headdim)
        if d_inner % p:
            raise SeqmemError(f"mamba2: expand * d_model = {d_inner} must be a multiple of "
                              f"headdim, got headdim={headdim!r}")
        self.d_state, self.d_conv, self.d_inner, self.headdim = n, d_conv, d_inner, p
        self.n_heads = h = d_inner // p
        self.negative_eigenvalues = bool(negative_eigenvalues)
        self.norm_eps = check_eps("mamba2", norm_eps)
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * n + h, bias=False)  # z, x, B, C, dt
        self._conv_setup(d_inner + 2 * n, d_conv)
        self.dt_bias = nn.Parameter(_dt_bias(h))
        self.A_log = nn.Parameter(torch.log(torch.empty(h).uniform_(1, 16)))  # A = -exp(A_log)
        self.D = nn.Parameter(torch.ones(h))
        self.norm_weight = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def _split(self, zxbcdt: Tensor):
        z, xbc, dt = zxbcdt.split([self.d_inner, self.d_xbc, self.n_heads], dim=-1)
        return z, xbc, dt

    def _ssd_inputs(self, xbc: Tensor, dt: Tensor):
        """Per head: x (..., h, p) dt-scaled, log decays a (..., h), B, C (..., h, n), and the
        unscaled x for the D skip."""
        x, B, C = F.silu(xbc).split([self.d_inner, self.d_state, self.d_state], dim=-1)
        x = rearrange(x, "... (h p) -> ... h p", p=self.headdim)  # (..., h, p)
        dt = F.softplus(dt + self.dt_bias)  # (..., h)
        a = -self.A_log.exp() * dt  # (..., h)
        B, C = (m[..., None, :].expand(*dt.shape, self.d_state) for m in (B, C))  # (..., h, n)
        return x * dt[..., None], a, B, C, x

    def _output(self, y: Tensor, x: Tensor, z: Tensor) -> Tensor:
        y = y + self.D[:, None] * x  # (..., h, p)
        y = rearrange(y, "... h p -> ... (h p)") * F.silu(z)  # (..., d_inner)
        return self.out_proj(rms_norm(y, self.norm_weight, self.norm_eps))

    def _forward(self, x, state, mode, chunk_size):
        z, xbc, dt = self._split(self.in_proj(x))
        xbc, conv = short_conv(xbc, self.conv_weight, self.conv_bias, state.conv)
        xs, a, B, C, x_skip = self._ssd_inputs(xbc, dt)  # (b, t, h, .)
        op = ssd_signed if self.negative_eigenvalues else ssd
        y, S = op(xs, a, B, C, state=state.ssm, chunk_size=chunk_size, mode=mode)
        return self._output(y, x_skip, z), MambaState(conv, S)

    def step(self, x_t, state):
        self.check_input(x_t, ndim=2)
        z, xbc, dt = self._split(self.in_proj(x_t))
        xbc, conv = short_conv_step(xbc, self.conv_weight, self.conv_bias, state.conv)
        xs, a, B, C, x_skip = self._ssd_inputs(xbc, dt)  # (b, h, .)
        step = ssd_signed_step if self.negative_eigenvalues else ssd_step
        y, S = step(xs, a, B, C, state.ssm)
        return self._output(y, x_skip, z), MambaState(conv, S)

    def init_state(self, batch_size, *, device=None, dtype=None):
        kw = self._state_kw(device, dtype)
        return MambaState(
            short_conv_init_state(batch_size, self.d_xbc, self.d_conv, **kw),
            torch.zeros(batch_size, self.n_heads, self.headdim, self.d_state, **kw))

    def state_size(self):
        return (self.d_conv - 1) * self.d_xbc + self.n_heads * self.headdim * self.d_state

    def timescales(self):
        """-1 / log|transition| of each head at zero input (dt = softplus(dt_bias)), for the
        d_model channels in head-major order."""
        log_decay = -self.A_log.detach().exp() * F.softplus(self.dt_bias.detach())  # (h,)
        return spread_over_channels(_log_timescale(log_decay, self.negative_eigenvalues),
                                    self.d_model)

    def extra_repr(self):
        return (f"d_model={self.d_model}, d_state={self.d_state}, d_inner={self.d_inner}, "
                f"n_heads={self.n_heads}, headdim={self.headdim}, "
                f"negative_eigenvalues={self.negative_eigenvalues}")
