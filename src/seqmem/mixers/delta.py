"""Delta-rule layers: DeltaNet (Yang, Wang, Zhang, Shen & Kim 2024) and Gated DeltaNet (Yang,
Kautz & Hatamizadeh 2025).

    q, k, v = SiLU(conv(W_{q,k,v} x))      (short causal depthwise convolutions)
    q, k L2-normalised per head,  beta_t = sigmoid(W_b x_t)  (x 2 with negative eigenvalues)
    DeltaNet:        S_t = (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t
    Gated DeltaNet:  S_t = alpha_t (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t,
                     alpha_t = exp(-exp(A_log) softplus(W_a x_t + dt_bias))   (Mamba-2's decay)
    o_t = q_t S_t / sqrt(d_k),   y = W_o (RMSNorm(o_t) * SiLU(W_g x_t))

per head, computed by `seqmem.ops.linear_attention.delta_rule` / `gated_delta_rule`. With
`negative_eigenvalues=True`, beta ranges over (0, 2), so I - beta k^T k has an eigenvalue
1 - beta in (-1, 1): the state can flip sign, which lets the layer track parity and other
state-tracking tasks (Grazzi et al. 2025, "Unlocking State-Tracking in Linear RNNs Through
Negative Eigenvalues").
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmem.mixers.base import Mixer, register
from seqmem.mixers.parts import (
    SHORT_CONV_LEGACY_NAMES,
    A_log_init,
    ShortConv,
    check_conv_size,
    check_eps,
    dt_bias_init,
    gated_rms_norm,
    head_dims,
    merge_heads,
    split_heads,
    spread_over_channels,
)
from seqmem.ops.linear_attention import (
    delta_rule,
    delta_rule_step,
    gated_delta_rule,
    gated_delta_rule_step,
)


class DeltaNetState(NamedTuple):
    """S (b, h, d_k, d_v) the matrix memory; conv (b, conv_size - 1, 2 h d_k + h d_v) the
    short convolution's last inputs."""

    S: Tensor
    conv: Tensor


class _DeltaLayer(Mixer):
    """The layer shared by DeltaNet and Gated DeltaNet (`gated` picks the op)."""

    modes = ("chunk", "parallel", "recurrent")
    gated = False
    legacy_names = SHORT_CONV_LEGACY_NAMES

    def __init__(self, d_model: int, *, n_heads: int = 2, expand_k: float = 1.0,
                 expand_v: float = 1.0, conv_size: int = 4, negative_eigenvalues: bool = False,
                 norm_eps: float = 1e-5):
        super().__init__(d_model)
        self.d_k, self.d_v = head_dims(self.name, d_model, n_heads, expand_k, expand_v)
        self.n_heads, self.conv_size = n_heads, check_conv_size(self.name, conv_size)
        self.negative_eigenvalues = bool(negative_eigenvalues)
        self.norm_eps = check_eps(self.name, norm_eps)
        h, dk, dv = n_heads, self.d_k, self.d_v
        d_qkv = h * (2 * dk + dv)  # the convolved channels: q, k and v of every head
        self.qkv = nn.Linear(d_model, d_qkv, bias=False)
        self.conv = ShortConv(d_qkv, conv_size)
        self.gates = nn.Linear(d_model, (2 if self.gated else 1) * h, bias=False)  # b (and a)
        self.out_gate = nn.Linear(d_model, h * dv, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(dv))
        self.out = nn.Linear(h * dv, d_model, bias=False)
        if self.gated:
            # Gated DeltaNet's initialisation: A ~ U(1, 16), dt log-uniform in [1e-3, 1e-1]
            self.A_log = nn.Parameter(A_log_init(h))
            self.dt_bias = nn.Parameter(dt_bias_init(h))  # softplus^-1(dt)

    def _inputs(self, x: Tensor, u: Tensor):
        """q, k (..., h, d_k), v (..., h, d_v), beta and the log decay g (..., h) (None
        without gate) from x (..., d_model) and the convolved projections u (..., h (2 d_k +
        d_v))."""
        qkv = split_heads(F.silu(u), self.n_heads)  # (..., h, 2 d_k + d_v)
        # q and k normalised in one call, as (..., h, 2, d_k)
        qk = F.normalize(qkv[..., :2 * self.d_k].unflatten(-1, (2, self.d_k)), dim=-1)
        q, k, v = qk[..., 0, :], qk[..., 1, :], qkv[..., 2 * self.d_k:]
        gates = self.gates(x)  # (..., h) or (..., 2 h)
        beta = gates[..., :self.n_heads].sigmoid()  # (..., h)
        if self.negative_eigenvalues:
            beta = 2 * beta
        g = None
        if self.gated:
            g = -self.A_log.exp() * F.softplus(gates[..., self.n_heads:] + self.dt_bias)
        return q, k, v, beta, g

    def _output(self, o: Tensor, x: Tensor) -> Tensor:
        gate = split_heads(self.out_gate(x), self.n_heads)  # (..., h, d_v)
        o = gated_rms_norm(o, self.norm_weight, gate, self.norm_eps)  # (..., h, d_v)
        return self.out(merge_heads(o))

    def _forward(self, x, state, mode, chunk_size):
        u, conv = self.conv(self.qkv(x), state.conv)  # (b, t, h (2 d_k + d_v))
        q, k, v, beta, g = self._inputs(x, u)  # (b, t, h, .)
        kw = {"state": state.S, "mode": mode, "chunk_size": chunk_size}
        if self.gated:
            o, S = gated_delta_rule(q, k, v, g=g, beta=beta, **kw)
        else:
            o, S = delta_rule(q, k, v, beta=beta, **kw)
        return self._output(o, x), DeltaNetState(S, conv)

    def _step(self, x_t, state):
        u, conv = self.conv.step(self.qkv(x_t), state.conv)
        q, k, v, beta, g = self._inputs(x_t, u)  # (b, h, .)
        if self.gated:
            o, S = gated_delta_rule_step(q, k, v, state.S, g=g, beta=beta)
        else:
            o, S = delta_rule_step(q, k, v, state.S, beta=beta)
        return self._output(o, x_t), DeltaNetState(S, conv)

    def init_state(self, batch_size, *, device=None, dtype=None):
        kw = self.state_options(device, dtype)
        return DeltaNetState(
            torch.zeros(batch_size, self.n_heads, self.d_k, self.d_v, **kw),
            self.conv.init_state(batch_size, **kw))

    def state_size(self):
        return self.n_heads * self.d_k * self.d_v + self.conv.state_size()

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, d_k={self.d_k}, "
                f"d_v={self.d_v}, negative_eigenvalues={self.negative_eigenvalues}")


@register("deltanet")
class DeltaNet(_DeltaLayer):
    """DeltaNet (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over
    Sequence Length"): the delta rule with short convolutions, SiLU, L2-normalised q and k,
    sigmoid beta and a gated RMS-normalised output (see the module docstring).

    Args:
        d_model: model width.
        n_heads: heads; expand_k * d_model and expand_v * d_model must be multiples.
        expand_k, expand_v: key and value widths as multiples of d_model.
        conv_size: width of the short convolutions (>= 2).
        negative_eigenvalues: beta in (0, 2) instead of (0, 1) (Grazzi et al. 2025).
        norm_eps: epsilon of the output RMSNorm.
    """

    gated = False


@register("gated_deltanet")
class GatedDeltaNet(_DeltaLayer):
    """Gated DeltaNet (Yang, Kautz & Hatamizadeh 2025, "Gated Delta Networks: Improving Mamba2
    with Delta Rule"): DeltaNet with Mamba-2's data-dependent decay
    alpha_t = exp(-exp(A_log) softplus(W_a x_t + dt_bias)) per head (module docstring).

    Args: as `deltanet`; the value width defaults to 2 d_model (the authors' expand_v = 2).
    """

    gated = True

    def __init__(self, d_model: int, *, n_heads: int = 2, expand_k: float = 1.0,
                 expand_v: float = 2.0, conv_size: int = 4, negative_eigenvalues: bool = False,
                 norm_eps: float = 1e-5):
        super().__init__(d_model, n_heads=n_heads, expand_k=expand_k, expand_v=expand_v,
                         conv_size=conv_size, negative_eigenvalues=negative_eigenvalues,
                         norm_eps=norm_eps)

    def timescales(self):
        """-1 / log(alpha) of each head at x = 0 (the decay at its bias,
        log alpha = -exp(A_log) softplus(dt_bias)), for the d_model channels in head-major
        order."""
        log_alpha = -self.A_log.detach().exp() * F.softplus(self.dt_bias.detach())  # (h,)
        return spread_over_channels(-1 / log_alpha, self.d_model)
