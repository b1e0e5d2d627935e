"""LightNet over a grid (Qin et al. 2024, "You Only Scan Once: Efficient Multi-dimension
Sequential Modeling with LightNet"): the additive linear recurrence run once over the cells
in raster order, with the paper's multi-dimensional positional encodings as options.

    u = x + MD-TPE(x) (option),  q = silu(W_q u), k = W_k u, v = W_v u,
    o_ij = lrpe(q_ij)^T S_ij,  S_ij = sum_{cells c <= (i, j)} lrpe(e^{k_c - z_ij}) v_c^T,
    y = W_o (RMSNorm(o) * silu(W_g2 W_g1 u))

per head, z_ij the log-sum-exp of the keys so far (see `seqmem.ops.lightnet2d`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from seqmem.errors import check_int
from seqmem.mixers.grid import Mixer2D, register_2d
from seqmem.mixers.lightnet import LightNetIO
from seqmem.ops.attention import EMPTY
from seqmem.ops.lightnet2d import (
    LightNet2DState,
    grid_phase,
    lightnet2d_chunk,
    lightnet2d_step,
    rotate_rows,
    tpe_cell,
    tpe_grid,
)


@register_2d("lightnet2d")
class LightNet2D(LightNetIO, Mixer2D):
    """LightNet's one-scan additive recurrence over a grid, causal in raster order.

    Args:
        d_model: model width (and value width).
        n_heads: heads (a divisor of d_model).
        d_key: key width per head (0 = d_model // n_heads).
        d_gate: rank of the output gate's projection.
        lrpe: MD-LRPE, a relative positional encoding of both axes on queries and keys
            (learned phases per key channel and axis; the state doubles).
        tpe: MD-TPE, a causal Toeplitz positional encoding of both axes added to the input
            (coefficients per offset from a small network of the offset).
        tpe_size: the Toeplitz encoding's width K (offsets 0..K-1 along each axis).
        chunk_size: chunk length of the chunked form over the raster order.
    """

    modes = ("chunk", "scan")

    def __init__(self, d_model: int, *, n_heads: int = 2, d_key: int = 0, d_gate: int = 16,
                 lrpe: bool = False, tpe: bool = False, tpe_size: int = 4,
                 chunk_size: int = 64):
        super().__init__(d_model)
        self._init_io("lightnet2d", d_model, n_heads, d_key, d_gate)
        self.chunk_size = check_int("lightnet2d: chunk_size", chunk_size)
        self.lrpe, self.tpe = bool(lrpe), bool(tpe)
        self.tpe_size = check_int("lightnet2d: tpe_size", tpe_size) if tpe else 1
        if self.lrpe:  # rotary-like frequencies, one per key channel, for rows and columns
            freq = 10000 ** (-torch.arange(self.d_key) / self.d_key) * math.pi / 2
            self.theta = nn.Parameter(torch.stack([freq, freq.flip(0)])[:, None].repeat(
                1, n_heads, 1))  # (2, h, d_key)
        if self.tpe:  # the Toeplitz coefficients: a network of the offset, per axis
            self.tpe_net = nn.Sequential(nn.Linear(1, 16), nn.SiLU(), nn.Linear(16, 2 * d_model))

    # ---- parts shared by both modes --------------------------------------------------------
    def _theta(self):
        return self.theta if self.lrpe else None

    def _toeplitz(self, like):
        """The coefficients r (K, d) and c (K, d) of MD-TPE (r_0 = 1 + its learned part)."""
        K = self.tpe_size
        a = torch.arange(K, device=like.device, dtype=like.dtype)[:, None] / K
        r, c = self.tpe_net(a).chunk(2, dim=-1)  # (K, d) each
        return r + (a == 0).to(like.dtype), c

    # ---- the forms ------------------------------------------------------------------------
    def _forward(self, x, state, mode):
        b, H, W, _ = x.shape
        theta = self._theta()
        if self.tpe:
            r, c = self._toeplitz(x)
        if mode == "scan":  # cell by cell in raster order
            S, z, ys = state.S, state.z, []
            phase = grid_phase(theta, H, W)
            for i in range(H):
                for j in range(W):
                    u = tpe_cell(x, state.rows, i, j, r, c) if self.tpe else x[:, i, j]
                    q, k, v = self._inputs(u)  # (b, h, .)
                    o, S, z = lightnet2d_step(q, k, v, None if phase is None else phase[i, j],
                                              S, z)
                    ys.append(self._output(u, o))
            rows = torch.cat([state.rows, x], dim=1)[:, H:] if self.tpe else state.rows
            y = torch.stack(ys, dim=1).view(b, H, W, self.d_model)
            return y, LightNet2DState(rotate_rows(S, theta, H), z, rows)
        u, rows = tpe_grid(x, state.rows, r, c) if self.tpe else (x, state.rows)
        flat = u.reshape(b, H * W, self.d_model)
        q, k, v = self._inputs(flat)  # (b, H W, h, .)
        phase = grid_phase(theta, H, W)
        o, S, z = lightnet2d_chunk(q, k, v, None if phase is None else phase.flatten(0, 1),
                                   state.S, state.z, self.chunk_size)
        y = self._output(flat, o).view(b, H, W, self.d_model)
        return y, LightNet2DState(rotate_rows(S, theta, H), z, rows)

    def init_state(self, batch_size, width=1, *, device=None, dtype=None):
        kw = self.state_options(device, dtype)
        h, k, m = (batch_size, self.n_heads), self.d_key, 2 if self.lrpe else 1
        return LightNet2DState(torch.zeros(*h, m * k, self.d_head, **kw),
                               torch.full((*h, k), EMPTY, **kw),
                               torch.zeros(batch_size, self.tpe_size - 1, width, self.d_model,
                                           **kw))

    def state_size(self, width=1):
        m = 2 if self.lrpe else 1
        return (self.n_heads * self.d_key * (m * self.d_head + 1)
                + (self.tpe_size - 1) * width * self.d_model)

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, d_key={self.d_key}, "
                f"lrpe={self.lrpe}, tpe={self.tpe}")
