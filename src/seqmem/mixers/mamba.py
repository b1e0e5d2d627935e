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
from torch import Tensor, nn

from seqmem.errors import SeqmemError, check_int
from seqmem.mixers.base import Mixer, register
from seqmem.mixers.parts import (
    MAX_TIMESCALE,
    SHORT_CONV_LEGACY_NAMES,
    A_log_init,
    ShortConv,
    check_conv_size,
    check_eps,
    dt_bias_init,
    merge_heads,
    rms_norm,
    split_heads,
    spread_over_channels,
)
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
    """conv (b, conv_size - 1, channels) the short convolution's last inputs (channels: x for
    Mamba, x, B, C for Mamba-2); ssm the state space's state ((b, d_inner, d_state) for Mamba,
    (b, n_heads, headdim, d_state) for Mamba-2)."""

    conv: Tensor
    ssm: Tensor


def _log_timescale(log_decay: Tensor, signed: bool) -> Tensor:
    """-1 / log|transition| for log decays dt A (<= 0): the e-folding time in steps, capped."""
    if signed:
        tiny = torch.finfo(log_decay.dtype).tiny
        log_decay = (2 * log_decay.exp() - 1).abs().clamp(min=tiny).log()
    return (-1 / log_decay.clamp(max=-1 / MAX_TIMESCALE)).clamp(max=MAX_TIMESCALE)


class _MambaBase(Mixer):
    """What the two blocks share: the checks of their sizes."""

    legacy_names = SHORT_CONV_LEGACY_NAMES

    def _sizes(self, d_model: int, d_state: int, conv_size: int, expand: int) -> tuple[int, int]:
        """(d_state, d_inner = expand * d_model), after checking d_state, conv_size, expand."""
        d_state = check_int(f"{self.name}: d_state", d_state)
        check_conv_size(self.name, conv_size)
        return d_state, d_model * check_int(f"{self.name}: expand", expand)


@register("mamba")
class Mamba(_MambaBase):
    """The Mamba block (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State
    Spaces"), see the module docstring.

    Args:
        d_model: model width.
        d_state: state size per channel (n).
        conv_size: width of the short causal convolution (>= 2).
        expand: inner width d_inner = expand * d_model.
        dt_rank: rank of the dt projection; None: ceil(d_model / 16).
        negative_eigenvalues: transitions 2 exp(dt A) - 1 in (-1, 1] (Grazzi et al. 2025).
    """

    modes = ("chunk", "recurrent")

    def __init__(self, d_model: int, *, d_state: int = 16, conv_size: int = 4, expand: int = 2,
                 dt_rank: int | None = None, negative_eigenvalues: bool = False):
        super().__init__(d_model)
        n, d_inner = self._sizes(d_model, d_state, conv_size, expand)
        dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        self.dt_rank = check_int("mamba: dt_rank (null: ceil(d_model / 16))", dt_rank)
        self.d_state, self.conv_size, self.d_inner = n, conv_size, d_inner
        self.negative_eigenvalues = bool(negative_eigenvalues)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)  # x, z
        self.conv = ShortConv(d_inner, conv_size, bias=True)  # over x
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * n, bias=False)  # dt, B, C
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        bound = self.dt_rank ** -0.5
        with torch.no_grad():
            self.dt_proj.weight.uniform_(-bound, bound)
            self.dt_proj.bias.copy_(dt_bias_init(d_inner))
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
        u, conv = self.conv(xz[..., :self.d_inner], state.conv)  # (b, t, d_inner)
        xs, delta, B, C, z = self._scan_inputs(xz, u)
        scan = selective_scan_signed if self.negative_eigenvalues else selective_scan
        y, h = scan(xs, delta, -self.A_log.exp(), B, C, self.D, z, delta_bias=self.dt_proj.bias,
                    delta_softplus=True, state=state.ssm, mode=mode, chunk_size=chunk_size)
        return self.out_proj(y), MambaState(conv, h)

    def _step(self, x_t, state):
        xz = self.in_proj(x_t)  # (b, 2 d_inner)
        u, conv = self.conv.step(xz[..., :self.d_inner], state.conv)
        xs, delta, B, C, z = self._scan_inputs(xz, u)
        step = selective_scan_signed_step if self.negative_eigenvalues else selective_scan_step
        y, h = step(xs, delta, -self.A_log.exp(), B, C, self.D, z,
                    delta_bias=self.dt_proj.bias, delta_softplus=True, state=state.ssm)
        return self.out_proj(y), MambaState(conv, h)

    def init_state(self, batch_size, *, device=None, dtype=None):
        kw = self.state_options(device, dtype)
        return MambaState(self.conv.init_state(batch_size, **kw),
                          torch.zeros(batch_size, self.d_inner, self.d_state, **kw))

    def state_size(self):
        return self.conv.state_size() + self.d_inner * self.d_state

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
        conv_size: width of the short causal convolution over x, B, C (>= 2).
        expand: inner width d_inner = expand * d_model.
        headdim: head dimension p; d_inner must be a multiple of it (n_heads = d_inner / p).
        negative_eigenvalues: transitions 2 exp(dt A) - 1 in (-1, 1] (Grazzi et al. 2025).
        norm_eps: epsilon of the gated RMSNorm.
    """

    modes = ("chunk", "quadratic", "recurrent")

    def __init__(self, d_model: int, *, d_state: int = 16, conv_size: int = 4, expand: int = 2,
                 headdim: int = 16, negative_eigenvalues: bool = False, norm_eps: float = 1e-5):
        super().__init__(d_model)
        n, d_inner = self._sizes(d_model, d_state, conv_size, expand)
        p = check_int("mamba2: headdim", headdim)
        if d_inner % p:
            raise SeqmemError(f"mamba2: expand * d_model = {d_inner} must be a multiple of "
                              f"headdim, got headdim={headdim!r}")
        self.d_state, self.conv_size, self.d_inner, self.headdim = n, conv_size, d_inner, p
        self.n_heads = h = d_inner // p
        self.negative_eigenvalues = bool(negative_eigenvalues)
        self.norm_eps = check_eps("mamba2", norm_eps)
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * n + h, bias=False)  # z, x, B, C, dt
        self.conv = ShortConv(d_inner + 2 * n, conv_size, bias=True)  # over x, B, C
        self.dt_bias = nn.Parameter(dt_bias_init(h))
        self.A_log = nn.Parameter(A_log_init(h))  # A = -exp(A_log)
        self.D = nn.Parameter(torch.ones(h))
        self.norm_weight = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def _split(self, zxbcdt: Tensor):
        z, xbc, dt = zxbcdt.split([self.d_inner, self.conv.channels, self.n_heads], dim=-1)
        return z, xbc, dt

    def _ssd_inputs(self, xbc: Tensor, dt: Tensor):
        """Per head: x (..., h, p) dt-scaled, log decays a (..., h), B, C (..., h, n), and the
        unscaled x for the D skip."""
        x, B, C = F.silu(xbc).split([self.d_inner, self.d_state, self.d_state], dim=-1)
        x = split_heads(x, self.n_heads)  # (..., h, p)
        dt = F.softplus(dt + self.dt_bias)  # (..., h)
        a = -self.A_log.exp() * dt  # (..., h)
        B, C = (m[..., None, :].expand(*dt.shape, self.d_state) for m in (B, C))  # (..., h, n)
        return x * dt[..., None], a, B, C, x

    def _output(self, y: Tensor, x: Tensor, z: Tensor) -> Tensor:
        y = y + self.D[:, None] * x  # (..., h, p)
        y = merge_heads(y) * F.silu(z)  # (..., d_inner)
        return self.out_proj(rms_norm(y, self.norm_weight, self.norm_eps))

    def _forward(self, x, state, mode, chunk_size):
        z, xbc, dt = self._split(self.in_proj(x))
        xbc, conv = self.conv(xbc, state.conv)
        xs, a, B, C, x_skip = self._ssd_inputs(xbc, dt)  # (b, t, h, .)
        op = ssd_signed if self.negative_eigenvalues else ssd
        y, S = op(xs, a, B, C, state=state.ssm, chunk_size=chunk_size, mode=mode)
        return self._output(y, x_skip, z), MambaState(conv, S)

    def _step(self, x_t, state):
        z, xbc, dt = self._split(self.in_proj(x_t))
        xbc, conv = self.conv.step(xbc, state.conv)
        xs, a, B, C, x_skip = self._ssd_inputs(xbc, dt)  # (b, h, .)
        step = ssd_signed_step if self.negative_eigenvalues else ssd_step
        y, S = step(xs, a, B, C, state.ssm)
        return self._output(y, x_skip, z), MambaState(conv, S)

    def init_state(self, batch_size, *, device=None, dtype=None):
        kw = self.state_options(device, dtype)
        return MambaState(
            self.conv.init_state(batch_size, **kw),
            torch.zeros(batch_size, self.n_heads, self.headdim, self.d_state, **kw))

    def state_size(self):
        return self.conv.state_size() + self.n_heads * self.headdim * self.d_state

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
