"""LightNet (Qin et al. 2024, "You Only Scan Once: Efficient Multi-dimension Sequential
Modeling with LightNet"), the 1-D causal layer:

    q = silu(W_q x), k = W_k x, v = W_v x,   o_t = q_t^T S_t with the additive recurrence
    S_t = e^{z_{t-1} - z_t} S_{t-1} + e^{k_t - z_t} v_t^T,  z_t = logaddexp(z_{t-1}, k_t)
    y = W_o (RMSNorm(o) * silu(W_g2 W_g1 x))          (a low-rank output gate)

per head (see `seqmem.ops.lightnet`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from seqmem.errors import check_int
from seqmem.mixers.base import Mixer, register
from seqmem.mixers.parts import check_heads, gated_rms_norm, merge_heads, split_heads
from seqmem.ops import tuning
from seqmem.ops.attention import EMPTY
from seqmem.ops.lightnet import LightNetState, lightnet_chunk, lightnet_step


class LightNetIO:
    """LightNet's projections and gated output, shared by the 1-D layer and `lightnet2d`:
    q = silu(W_q x), k = W_k x, v = W_v x per head, and y = W_o (RMSNorm(o) * silu(W_g2 W_g1
    x)). A mixin of a Mixer: `_init_io` sets the parameters (qk, v, gate, norm_weight, out)."""

    def _init_io(self, who: str, d_model: int, n_heads: int, d_key: int, d_gate: int) -> None:
        self.n_heads = n_heads
        self.d_head = check_heads(who, d_model, n_heads)
        self.d_key = check_int(f"{who}: d_key (0: d_model // n_heads)", d_key, low=0) \
            or self.d_head
        self.d_gate = check_int(f"{who}: d_gate", d_gate)
        self.qk = nn.Linear(d_model, 2 * n_heads * self.d_key, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.gate = nn.Sequential(nn.Linear(d_model, d_gate, bias=False),
                                  nn.Linear(d_gate, d_model, bias=False))
        self.norm_weight = nn.Parameter(torch.ones(d_model))
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _inputs(self, x):
        q, k = rearrange(self.qk(x), "... (n h d) -> n ... h d", n=2, h=self.n_heads)
        v = split_heads(self.v(x), self.n_heads)  # (..., h, d_head)
        return F.silu(q), k, v

    def _output(self, x, o):
        """W_o (RMSNorm(o) * SiLU(W_g2 W_g1 x)) over the merged heads, o (..., h, d_head)."""
        return self.out(gated_rms_norm(merge_heads(o), self.norm_weight, self.gate(x), 1e-6))


@register("lightnet")
class LightNet(LightNetIO, Mixer):
    """LightNet's additive linear recurrence with a gated RMS-normalised output.

    Args:
        d_model: model width (and value width).
        n_heads: heads (a divisor of d_model).
        d_key: key width per head (0 = d_model // n_heads).
        d_gate: rank of the output gate's projection.
    """

    modes = ("chunk", "recurrent")

    def __init__(self, d_model: int, *, n_heads: int = 2, d_key: int = 0, d_gate: int = 16):
        super().__init__(d_model)
        self._init_io("lightnet", d_model, n_heads, d_key, d_gate)

    def _forward(self, x, state, mode, chunk_size):
        if mode == "recurrent":
            return self._step_loop(x, state)
        q, k, v = self._inputs(x)  # (b, t, h, .)
        o, state = lightnet_chunk(q, k, v, state, tuning.resolve("lightnet", chunk_size))
        return self._output(x, o), state

    def _step(self, x_t, state):
        q, k, v = self._inputs(x_t)  # (b, h, .)
        o, state = lightnet_step(q, k, v, state)
        return self._output(x_t, o), state

    def init_state(self, batch_size, *, device=None, dtype=None):
        kw = self.state_options(device, dtype)
        h, k = (batch_size, self.n_heads), self.d_key
        return LightNetState(torch.zeros(*h, k, self.d_head, **kw),
                             torch.full((*h, k), EMPTY, **kw))

    def state_size(self):
        return self.n_heads * self.d_key * (self.d_head + 1)

    def extra_repr(self):
        return f"d_model={self.d_model}, n_heads={self.n_heads}, d_key={self.d_key}"
