"""Temporal convolution mixers: a dilated causal TCN, and TCNCA (a TCN with chunked attention).

- `tcn` (Bai et al. 2018, "An Empirical Evaluation of Generic Convolutional and Recurrent
  Networks for Sequence Modeling"): residual blocks
      h = relu(conv2(relu(conv1(x)))),  y = relu(h + x),
  conv1 and conv2 causal with kernel k and dilation base^i in block i. Receptive field:
  1 + 2 (k-1) sum_i base^i. (No weight normalisation or dropout: the mixer is deterministic.)
- `tcnca` (Terzic et al. 2023, "TCNCA: Temporal Convolution Network with Chunked Attention for
  Scalable Sequence Processing"): MEGA's gated single-head attention (Ma et al. 2023) with its
  EMA replaced by a TCN and softmax attention inside chunks of `attn_chunk` tokens:
      x' = tcn(x), z = silu(W_z x'), q = gamma_q z + beta_q, k = gamma_k z + beta_k,
      v = silu(W_v x), o = chunk-causal softmax(q k^T / sqrt(d_attn)) v,
      r = silu(W_r x'), h = silu(W_h x' + U_h (r * o)), u = sigmoid(W_u x'),
      y = u * h + (1 - u) * x.
  Its state: the TCN's buffers and the keys / values of the current chunk's tokens (a buffer of
  attn_chunk - 1 slots; empty slots carry the log-weight EMPTY; how many are filled is the
  position inside the chunk).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmem.errors import check_int
from seqmem.mixers.base import Mixer, register
from seqmem.mixers.parts import chunk_phase
from seqmem.ops.attention import EMPTY, attention_parallel, attention_step, is_filled
from seqmem.ops.tcn import dilated_conv, dilated_conv_init_state, dilated_conv_step


@register("tcn")
class TCN(Mixer):
    """Dilated causal temporal convolution stack (residual blocks of two convolutions).

    Args:
        d_model: channels (input, hidden and output).
        n_layers: residual blocks; block i has dilation dilation_base**i.
        kernel_size: taps of every convolution.
        dilation_base: growth of the dilation per block.
    """

    modes = ("parallel", "recurrent")

    def __init__(self, d_model: int, *, n_layers: int = 4, kernel_size: int = 3,
                 dilation_base: int = 2):
        super().__init__(d_model)
        self.n_layers = check_int("tcn: n_layers", n_layers)
        self.kernel_size = check_int("tcn: kernel_size", kernel_size)
        self.dilation_base = check_int("tcn: dilation_base", dilation_base)
        self.dilations = [dilation_base ** i for i in range(n_layers)]
        self.convs = nn.ModuleList(
            nn.Conv1d(d_model, d_model, kernel_size) for _ in range(2 * n_layers)
        )

    def receptive_field(self) -> int:
        """Inputs that one output depends on: 1 + 2 (k-1) sum_i dilation_i."""
        return 1 + 2 * (self.kernel_size - 1) * sum(self.dilations)

    def _layers(self):
        for i, conv in enumerate(self.convs):
            yield conv.weight, conv.bias, self.dilations[i // 2]

    def _forward(self, x, state, mode, chunk_size):
        if mode == "recurrent":
            return self._step_loop(x, state)
        new, h, res = [], x, x
        for i, (w, b, dil) in enumerate(self._layers()):
            h, s = dilated_conv(h, w, b, state[i], dil)  # (b, t, d)
            new.append(s)
            h = F.relu(h + res) if i % 2 else F.relu(h)
            res = h if i % 2 else res
        return h, tuple(new)

    def _step(self, x_t, state):
        new, h, res = [], x_t, x_t
        for i, (w, b, dil) in enumerate(self._layers()):
            h, s = dilated_conv_step(h, w, b, state[i], dil)  # (b, d)
            new.append(s)
            h = F.relu(h + res) if i % 2 else F.relu(h)
            res = h if i % 2 else res
        return h, tuple(new)

    def init_state(self, batch_size, *, device=None, dtype=None):
        kw = self.state_options(device, dtype)
        return tuple(dilated_conv_init_state(batch_size, self.d_model, self.kernel_size, dil, **kw)
                     for _, _, dil in self._layers())

    def state_size(self):
        return sum((self.kernel_size - 1) * dil * self.d_model for _, _, dil in self._layers())

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_layers={self.n_layers}, "
                f"kernel_size={self.kernel_size}, dilation_base={self.dilation_base}")


class TCNCAState(NamedTuple):
    """conv: the TCN's buffers; k (b, attn_chunk - 1, d_attn), v (b, attn_chunk - 1, d_model)
    and log_m (b, attn_chunk - 1): the current chunk's tokens, oldest first."""

    conv: tuple[Tensor, ...]
    k: Tensor
    v: Tensor
    log_m: Tensor


@register("tcnca")
class TCNCA(Mixer):
    """TCN with chunked attention in MEGA's gated single-head layer.

    Args:
        d_model: model width.
        d_attn: width of queries and keys (0 = d_model).
        attn_chunk: tokens per attention chunk (attention never crosses a chunk boundary).
        n_layers, kernel_size, dilation_base: the TCN (see `tcn`).
    """

    modes = ("parallel", "recurrent")

    def __init__(self, d_model: int, *, d_attn: int = 0, attn_chunk: int = 16,
                 n_layers: int = 4, kernel_size: int = 3, dilation_base: int = 2):
        super().__init__(d_model)
        self.d_attn = check_int("tcnca: d_attn (0: d_model)", d_attn, low=0) or d_model
        self.attn_chunk = check_int("tcnca: attn_chunk", attn_chunk)
        self.n_buffer = attn_chunk - 1
        self.tcn = TCN(d_model, n_layers=n_layers, kernel_size=kernel_size,
                       dilation_base=dilation_base)
        self.proj = nn.Linear(d_model, self.d_attn + 3 * d_model)  # z, r, h, u from x'
        self.value = nn.Linear(d_model, d_model)
        self.U_h = nn.Linear(d_model, d_model, bias=False)
        self.gamma = nn.Parameter(1 + 0.1 * torch.randn(2, self.d_attn))  # q, k scales
        self.beta = nn.Parameter(torch.zeros(2, self.d_attn))  # q, k offsets

    def _inputs(self, x: Tensor, xc: Tensor):
        """q, k (..., d_attn), v and the gate pre-activations r, h, u (..., d_model)."""
        z, r, h, u = self.proj(xc).split([self.d_attn, *[self.d_model] * 3], dim=-1)
        z = F.silu(z)
        q, k = z * self.gamma[0] + self.beta[0], z * self.gamma[1] + self.beta[1]
        return q, k, F.silu(self.value(x)), r, h, u

    def _output(self, x: Tensor, o: Tensor, r: Tensor, h: Tensor, u: Tensor) -> Tensor:
        h = F.silu(h + self.U_h(F.silu(r) * o))
        u = torch.sigmoid(u)
        return u * h + (1 - u) * x

    def _forward(self, x, state, mode, chunk_size):
        if mode == "recurrent":
            return self._step_loop(x, state)
        b, t, _ = x.shape
        p0, L, n_buf = chunk_phase("tcnca", state.log_m), self.attn_chunk, self.n_buffer
        xc, conv = self.tcn._forward(x, state.conv, "parallel", chunk_size)
        q, k, v, r, h, u = self._inputs(x, xc)  # (b, t, .)
        # the stream from the current chunk's start, cut into whole chunks
        sq = torch.cat([q.new_zeros(b, p0, self.d_attn), q], dim=1)  # (b, p0 + t, d_attn)
        sk = torch.cat([state.k[:, n_buf - p0:], k], dim=1)
        sv = torch.cat([state.v[:, n_buf - p0:], v], dim=1)
        sm = torch.cat([state.log_m[:, n_buf - p0:], x.new_zeros(b, t)], dim=1)  # (b, p0 + t)
        n_chunks = -(-(p0 + t) // L)
        pad = n_chunks * L - (p0 + t)
        sq, sk, sv = (F.pad(z, (0, 0, 0, pad)).reshape(b * n_chunks, L, 1, -1)
                      for z in (sq, sk, sv))  # (b n, L, 1, .)
        sm = F.pad(sm, (0, pad)).reshape(b * n_chunks, L)
        o = attention_parallel(sq, sk, sv, sm).reshape(b, n_chunks * L, -1)[:, p0:p0 + t]
        y = self._output(x, o, r, h, u)
        # the final chunk's tokens: after the last completed chunk, or appended to the buffer
        done = (p0 + t) // L * L - p0  # tokens up to the last chunk boundary
        if done > 0:
            tail = t - done
            k_buf = torch.cat([k.new_zeros(b, n_buf, self.d_attn), k[:, done:]], dim=1)
            v_buf = torch.cat([v.new_zeros(b, n_buf, self.d_model), v[:, done:]], dim=1)
            m_buf = torch.cat([x.new_full((b, n_buf), EMPTY), x.new_zeros(b, tail)], dim=1)
        else:
            k_buf = torch.cat([state.k, k], dim=1)
            v_buf = torch.cat([state.v, v], dim=1)
            m_buf = torch.cat([state.log_m, x.new_zeros(b, t)], dim=1)
        start = k_buf.shape[1] - n_buf
        return y, TCNCAState(conv, k_buf[:, start:], v_buf[:, start:], m_buf[:, start:])

    def _step(self, x_t, state):
        xc, conv = self.tcn._step(x_t, state.conv)
        q, k, v, r, h, u = self._inputs(x_t, xc)  # (b, .)
        keys = torch.cat([state.k, k[:, None]], dim=1)  # (b, attn_chunk, d_attn)
        values = torch.cat([state.v, v[:, None]], dim=1)
        log_m = torch.cat([state.log_m, x_t.new_zeros(x_t.shape[0], 1)], dim=1)
        o = attention_step(q[:, None], keys[:, :, None], values[:, :, None], log_m)[:, 0]
        complete = (is_filled(state.log_m).sum(dim=-1) == self.n_buffer)[:, None]  # (b, 1)
        new = TCNCAState(
            conv,
            torch.where(complete[..., None], 0.0, keys[:, 1:]),
            torch.where(complete[..., None], 0.0, values[:, 1:]),
            torch.where(complete, EMPTY, log_m[:, 1:]),
        )
        return self._output(x_t, o, r, h, u), new

    def init_state(self, batch_size, *, device=None, dtype=None):
        kw = self.state_options(device, dtype)
        return TCNCAState(
            self.tcn.init_state(batch_size, **kw),
            torch.zeros(batch_size, self.n_buffer, self.d_attn, **kw),
            torch.zeros(batch_size, self.n_buffer, self.d_model, **kw),
            torch.full((batch_size, self.n_buffer), EMPTY, **kw),
        )

    def state_size(self):
        return self.tcn.state_size() + self.n_buffer * (self.d_attn + self.d_model + 1)

    def extra_repr(self):
        return f"d_model={self.d_model}, d_attn={self.d_attn}, attn_chunk={self.attn_chunk}"
