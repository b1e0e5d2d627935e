"""Linear-attention layers: linear attention (Katharopoulos et al. 2020), RetNet's multi-scale
retention (Sun et al. 2023) and gated linear attention (Yang et al. 2023).

Each projects x to per-head queries, keys and values (b, t, h, d), runs a matrix-state op of
`seqmem.ops.linear_attention` (state (b, h, d_k, d_v)), and maps the heads' outputs back to
d_model. Key and value widths are `expand_k * d_model` and `expand_v * d_model` (the papers'
defaults), split evenly over `n_heads`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from seqmem.errors import SeqmemError, check_int
from seqmem.mixers.base import Mixer, register
from seqmem.mixers.parts import (
    check_eps,
    head_dims,
    merge_heads,
    rms_norm,
    split_heads,
    spread_over_channels,
)
from seqmem.ops.attention import rotary
from seqmem.ops.linear_attention import (
    gla,
    gla_step,
    linear_attention,
    linear_attention_step,
    retention,
    retention_step,
)


class LinearAttnState(NamedTuple):
    """S = sum_s phi(k_s)^T v_s (b, h, d_k, d_v); the normaliser z = sum_s phi(k_s) (b, h, d_k)."""

    S: Tensor
    z: Tensor


@register("linear_attn")
class LinearAttn(Mixer):
    """Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"), causal. Per head:

        phi(x) = elu(x) + 1,   S_t = S_{t-1} + phi(k_t)^T v_t,   z_t = z_{t-1} + phi(k_t)
        o_t = phi(q_t) S_t / (phi(q_t) . z_t + eps),   y = W_o o

    with q, k, v = W_{q,k,v} x. The normaliser rides along as one more value channel of the
    op (v_t extended by a 1), so every mode runs one `linear_attention` call.

    Args:
        d_model: model width.
        n_heads: heads; expand_k * d_model and expand_v * d_model must be multiples.
        expand_k, expand_v: key and value widths as multiples of d_model.
        eps: added to the normaliser (the authors' 1e-6).
    """

    modes = ("chunk", "parallel", "recurrent")

    def __init__(self, d_model: int, *, n_heads: int = 2, expand_k: float = 1.0,
                 expand_v: float = 1.0, eps: float = 1e-6):
        super().__init__(d_model)
        self.d_k, self.d_v = head_dims("linear_attn", d_model, n_heads, expand_k, expand_v)
        self.n_heads, self.expand_k, self.expand_v = n_heads, expand_k, expand_v
        self.eps = check_eps("linear_attn", eps)
        h = n_heads
        self.qkv = nn.Linear(d_model, h * (2 * self.d_k + self.d_v), bias=False)
        self.out = nn.Linear(h * self.d_v, d_model, bias=False)

    def _inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """phi(q), phi(k) (..., h, d_k) and v extended by a 1 (..., h, d_v + 1)."""
        q, k, v = split_heads(self.qkv(x), self.n_heads).split([self.d_k, self.d_k, self.d_v],
                                                               dim=-1)
        v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # (..., h, d_v + 1)
        return F.elu(q) + 1, F.elu(k) + 1, v

    def _output(self, o: Tensor) -> Tensor:
        y = o[..., :-1] / (o[..., -1:] + self.eps)  # (..., h, d_v)
        return self.out(merge_heads(y))

    def _forward(self, x, state, mode, chunk_size):
        q, k, v = self._inputs(x)  # (b, t, h, .)
        S = torch.cat([state.S, state.z[..., None]], dim=-1)  # (b, h, d_k, d_v + 1)
        o, S = linear_attention(q, k, v, scale=1.0, state=S, mode=mode, chunk_size=chunk_size)
        return self._output(o), LinearAttnState(S[..., :-1], S[..., -1])

    def _step(self, x_t, state):
        q, k, v = self._inputs(x_t)  # (b, h, .)
        S = torch.cat([state.S, state.z[..., None]], dim=-1)
        o, S = linear_attention_step(q, k, v, S, scale=1.0)
        return self._output(o), LinearAttnState(S[..., :-1], S[..., -1])

    def init_state(self, batch_size, *, device=None, dtype=None):
        kw = self.state_options(device, dtype)
        return LinearAttnState(torch.zeros(batch_size, self.n_heads, self.d_k, self.d_v, **kw),
                               torch.zeros(batch_size, self.n_heads, self.d_k, **kw))

    def state_size(self):
        return self.n_heads * self.d_k * (self.d_v + 1)

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, d_k={self.d_k}, "
                f"d_v={self.d_v}")


def _rotate_rows(S: Tensor, position: int, base: float) -> Tensor:
    """Rotate the key axis of a state S (b, h, d_k, d_v) by `position` steps of the rotary
    frequencies (the rotation `rotary` applies to a key at that position)."""
    h, d_v = S.shape[1], S.shape[3]
    S = rearrange(S, "b h k v -> b 1 (h v) k")
    return rearrange(rotary(S, position, base=base), "b 1 (h v) k -> b h k v", h=h, v=d_v)


class MatrixStateMixer(Mixer):
    """A mixer whose state is one (d_k, d_v) matrix per head: (b, n_heads, d_k, d_v)."""

    def init_state(self, batch_size, *, device=None, dtype=None):
        return torch.zeros(batch_size, self.n_heads, self.d_k, self.d_v,
                           **self.state_options(device, dtype))

    def state_size(self):
        return self.n_heads * self.d_k * self.d_v


@register("retnet")
class RetNet(MatrixStateMixer):
    """Multi-scale retention (Sun et al. 2023, "Retentive Network", section 2.2). Per head i:

        q_t = (W_Q x_t) Theta_t,  k_t = (W_K x_t) Theta_t,  v_t = W_V x_t
        o_t = sum_{s<=t} gamma_i^{t-s} (q_t . k_s) v_s / sqrt(d_k),  gamma_i = 1 - 2^(-5-i)
        y = W_O (swish(W_G x) * GroupNorm(o))          (GroupNorm: one group per head)

    Theta_t rotates channel pairs by t times fixed frequencies (the paper's e^{i t theta}, as
    in `rotary`). The state is kept in the frame of the current token: with the rotation
    folded in, S_t = gamma R S_{t-1} + k_t^T v_t for a fixed rotation R of the key axis, so no
    position counter is stored and a state passed on continues the sequence exactly. In a
    forward pass the tokens sit at positions 1..t relative to the state passed in, the op
    `retention` runs on rotated q and k, and its final state is rotated back by -t.

    Args:
        d_model: model width.
        n_heads: heads (one decay each); expand_k * d_model and expand_v * d_model must be
            multiples.
        expand_k, expand_v: key and value widths as multiples of d_model (the paper: 1, 2).
        rotary: the rotation Theta (False: plain decayed linear attention).
        rotary_base: the rotary frequency base.
        norm_eps: epsilon of the GroupNorm.
    """

    modes = ("chunk", "parallel", "recurrent")

    def __init__(self, d_model: int, *, n_heads: int = 2, expand_k: float = 1.0,
                 expand_v: float = 2.0, rotary: bool = True, rotary_base: float = 10000.0,
                 norm_eps: float = 1e-5):
        super().__init__(d_model)
        self.d_k, self.d_v = head_dims("retnet", d_model, n_heads, expand_k, expand_v)
        if not (isinstance(rotary_base, int | float) and rotary_base > 1):
            raise SeqmemError(f"retnet: rotary_base must be > 1, got {rotary_base!r}")
        self.n_heads, self.rotary, self.rotary_base = n_heads, bool(rotary), float(rotary_base)
        self.norm_eps = check_eps("retnet", norm_eps)
        h, dk, dv = n_heads, self.d_k, self.d_v
        self.qkvg = nn.Linear(d_model, h * (2 * dk + 2 * dv), bias=False)
        self.norm_weight = nn.Parameter(torch.ones(h * dv))
        self.norm_bias = nn.Parameter(torch.zeros(h * dv))
        self.out = nn.Linear(h * dv, d_model, bias=False)
        gammas = [1 - 2.0 ** (-5 - i) for i in range(n_heads)]
        self.register_buffer("log_decay", torch.log(torch.tensor(gammas)))  # (h,), fixed

    def _inputs(self, x: Tensor):
        """q, k (..., h, d_k), v and the gate's input (..., h, d_v)."""
        qkvg = split_heads(self.qkvg(x), self.n_heads)  # (..., h, 2 d_k + 2 d_v)
        return qkvg.split([self.d_k, self.d_k, self.d_v, self.d_v], dim=-1)

    def _output(self, o: Tensor, gate: Tensor) -> Tensor:
        mean = o.mean(-1, keepdim=True)
        o = (o - mean) * torch.rsqrt(o.var(-1, unbiased=False, keepdim=True) + self.norm_eps)
        o = merge_heads(o) * self.norm_weight + self.norm_bias
        return self.out(F.silu(merge_heads(gate)) * o)

    def _forward(self, x, state, mode, chunk_size):
        q, k, v, gate = self._inputs(x)  # (b, t, h, .)
        if self.rotary:
            q, k = (rotary(z, 1, base=self.rotary_base) for z in (q, k))  # positions 1..t
        o, S = retention(q, k, v, self.log_decay, state=state, mode=mode, chunk_size=chunk_size)
        if self.rotary:
            S = _rotate_rows(S, -x.shape[1], self.rotary_base)  # into the last token's frame
        return self._output(o, gate), S

    def _step(self, x_t, state):
        q, k, v, gate = self._inputs(x_t)  # (b, h, .)
        if self.rotary:
            q, k = (rotary(z[:, None], 1, base=self.rotary_base)[:, 0] for z in (q, k))
        o, S = retention_step(q, k, v, self.log_decay, state)
        if self.rotary:
            S = _rotate_rows(S, -1, self.rotary_base)
        return self._output(o, gate), S

    def timescales(self):
        """-1 / log(gamma_i) of head i, for the d_model channels in head-major order."""
        return spread_over_channels(-1 / self.log_decay.detach(), self.d_model)

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, d_k={self.d_k}, "
                f"d_v={self.d_v}, rotary={self.rotary}")


@register("gla")
class GLA(MatrixStateMixer):
    """Gated linear attention (Yang, Wang, Shen, Panda & Kim 2023, "Gated Linear Attention
    Transformers with Hardware-Efficient Training", section 4.4). Per head:

        q, k, v = W_{Q,K,V} x,   log alpha_t = logsigmoid(W_a2 W_a1 x_t + b_a) / tau
        S_t = diag(alpha_t) S_{t-1} + k_t^T v_t,   o_t = q_t S_t / sqrt(d_k)
        y = W_O (swish(W_r x + b_r) * RMSNorm(o))

    with a low-rank (gate_rank) data-dependent forget gate and the paper's temperature
    tau = 16, which keeps alpha near 1.

    Args:
        d_model: model width.
        n_heads: heads; expand_k * d_model and expand_v * d_model must be multiples.
        expand_k, expand_v: key and value widths as multiples of d_model (the paper: 0.5, 1).
        gate_rank: rank of the forget gate's projection (the paper: 16).
        gate_temperature: tau (the paper: 16).
        norm_eps: epsilon of the output RMSNorm.
    """

    modes = ("chunk", "parallel", "recurrent")

    def __init__(self, d_model: int, *, n_heads: int = 2, expand_k: float = 0.5,
                 expand_v: float = 1.0, gate_rank: int = 16, gate_temperature: float = 16.0,
                 norm_eps: float = 1e-5):
        super().__init__(d_model)
        self.d_k, self.d_v = head_dims("gla", d_model, n_heads, expand_k, expand_v)
        check_int("gla: gate_rank", gate_rank)
        if not (isinstance(gate_temperature, int | float) and gate_temperature > 0):
            raise SeqmemError(f"gla: gate_temperature must be > 0, got {gate_temperature!r}")
        self.n_heads, self.gate_rank = n_heads, gate_rank
        self.gate_temperature = float(gate_temperature)
        self.norm_eps = check_eps("gla", norm_eps)
        h, dk, dv = n_heads, self.d_k, self.d_v
        self.qkv = nn.Linear(d_model, h * (2 * dk + dv), bias=False)
        self.gate_down = nn.Linear(d_model, gate_rank, bias=False)
        self.gate_up = nn.Linear(gate_rank, h * dk, bias=True)
        self.out_gate = nn.Linear(d_model, h * dv, bias=True)
        self.norm_weight = nn.Parameter(torch.ones(dv))
        self.out = nn.Linear(h * dv, d_model, bias=False)

    def _inputs(self, x: Tensor):
        """q, k, the log forget gate g (..., h, d_k) and v (..., h, d_v)."""
        q, k, v = split_heads(self.qkv(x), self.n_heads).split([self.d_k, self.d_k, self.d_v],
                                                               dim=-1)
        g = F.logsigmoid(self.gate_up(self.gate_down(x))) / self.gate_temperature
        return q, k, v, split_heads(g, self.n_heads)

    def _output(self, o: Tensor, x: Tensor) -> Tensor:
        o = merge_heads(rms_norm(o, self.norm_weight, self.norm_eps))  # (..., h d_v)
        return self.out(F.silu(self.out_gate(x)) * o)

    def _forward(self, x, state, mode, chunk_size):
        q, k, v, g = self._inputs(x)  # (b, t, h, .)
        o, S = gla(q, k, v, g, state=state, mode=mode, chunk_size=chunk_size)
        return self._output(o, x), S

    def _step(self, x_t, state):
        q, k, v, g = self._inputs(x_t)  # (b, h, .)
        o, S = gla_step(q, k, v, g, state)
        return self._output(o, x_t), S

    def timescales(self):
        """-1 / log(alpha) of each key channel at x = 0 (the gate at its bias,
        log alpha = logsigmoid(b_a) / tau), spread over the d_model channels head by head
        (channel c takes key channel floor(c n_keys / d_model))."""
        log_alpha = F.logsigmoid(self.gate_up.bias.detach()) / self.gate_temperature  # (h d_k,)
        return spread_over_channels(-1 / log_alpha, self.d_model)

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, d_k={self.d_k}, "
                f"d_v={self.d_v}, gate_rank={self.gate_rank}")
