"""Chimera: a 2-D selective state-space model over time x variates (Behrouz et al. 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmem.errors import check_int
from seqmem.mixers.grid import Mixer2D, raster_scan, register_2d
from seqmem.mixers.parts import A_log_init, dt_bias_init
from seqmem.ops.chimera import ChimeraState, chimera_read, chimera_rows, chimera_step


@register_2d("chimera")
class Chimera(Mixer2D):
    """Chimera's 2-D selective SSM on a grid of rows = time and columns = variates.

    Behrouz, Santacatterina & Zabih 2024 (NeurIPS), the 2-D SSM of their Sec. 3: each cell
    carries h1 along time and h2 along the variates (`seqmem.ops.chimera`),
    h1[i, j] = a1 h1[i-1, j] + a2 h2[i-1, j] + dt1 B1 x[i, j],
    h2[i, j] = a3 h1[i, j-1] + a4 h2[i, j-1] + dt2 B2 x[i, j],
    y = C1 h1 + C2 h2 + D x, then a linear output map, per channel with n = d_state state
    coordinates. Selective (input-dependent): the steps dt1, dt2 (per channel, softplus of a
    projection plus Mamba's dt bias), B1, B2, C1, C2 (per state coordinate, shared by the
    channels) are linear in x[i, j]. Discretisation: zero-order hold of the diagonal decays,
    a1 = exp(dt1 A1), a4 = exp(dt2 A4) with A = -exp(A_log) < 0, and the inputs by their step
    (dt B, as Mamba); the cross terms are seqmem's choice, a2 = (1 - a1) tanh(c2) and
    a3 = (1 - a4) tanh(c3) (learned c2, c3 per channel and coordinate), so that each row of
    the 2 x 2 transition has absolute sum below 1 and the states stay bounded on any grid.
    The paper's second (seasonal) head, its gating and the bidirectional pass over the
    variates are not part of this mixer (a model stacks or combines blocks).

    Causal along rows (time) and along the columns in raster order (the variates are read
    left to right). Modes: "parallel" (each row at once: h1 elementwise, h2 by a prefix scan
    along the row; `ops.chimera.chimera_rows`) and "scan" (the grid cell by cell in raster
    order, `ops.chimera.chimera_step`). The state passed between row blocks is the last
    row's (h1, h2), `ChimeraState` of (b, W, d_model, d_state) each.

    Args:
        d_state: state coordinates n per channel (of h1 and of h2 each).
    """

    modes = ("parallel", "scan")

    def __init__(self, d_model: int, *, d_state: int = 8):
        super().__init__(d_model)
        self.d_state = check_int("chimera: d_state", d_state)
        d, n = d_model, self.d_state
        self.x_proj = nn.Linear(d, 2 * d + 4 * n, bias=False)  # dt1, dt2, B1, B2, C1, C2
        self.dt_bias = nn.Parameter(torch.cat([dt_bias_init(d), dt_bias_init(d)]))  # (2d,)
        self.A_log = nn.Parameter(torch.stack([A_log_init(d * n, low=1.0, high=n + 1.0)
                                               .view(d, n) for _ in range(2)]))  # (2, d, n)
        self.coupling = nn.Parameter(torch.zeros(2, d, n))  # c2, c3
        self.D = nn.Parameter(torch.ones(d))
        self.out_proj = nn.Linear(d, d, bias=False)

    def _coefficients(self, x: Tensor):
        """a1..a4, u1, u2 (b, H, W, d, n) and C1, C2 (b, H, W, n) of the grid x."""
        d, n = self.d_model, self.d_state
        dt, B1, B2, C1, C2 = self.x_proj(x).split([2 * d, n, n, n, n], dim=-1)
        dt1, dt2 = F.softplus(dt + self.dt_bias).unsqueeze(-1).split([d, d], dim=-2)
        A1, A4 = -torch.exp(self.A_log)  # (d, n) each
        a1, a4 = torch.exp(dt1 * A1), torch.exp(dt2 * A4)  # (b, H, W, d, n)
        c2, c3 = torch.tanh(self.coupling)
        a2, a3 = (1 - a1) * c2, (1 - a4) * c3
        xs = x.unsqueeze(-1)  # (b, H, W, d, 1)
        u1 = dt1 * B1.unsqueeze(-2) * xs
        u2 = dt2 * B2.unsqueeze(-2) * xs
        return (a1, a2, a3, a4, u1, u2), C1, C2

    def _forward(self, x, state, mode):
        coef, C1, C2 = self._coefficients(x)
        if mode == "parallel":
            y, state = chimera_rows(*coef, C1, C2, state)
        else:  # one packed tensor per cell for raster_scan: six (d, n) parts, C1, C2
            d, n = self.d_model, self.d_state
            packed = torch.cat([torch.stack(coef, dim=-3).flatten(-3), C1, C2], dim=-1)

            def cell(v, up, left):
                parts = v[:, : 6 * d * n].unflatten(-1, (6, d, n)).unbind(-3)
                c1, c2 = v[:, 6 * d * n:].split([n, n], dim=-1)
                h = chimera_step(*parts, up, left)
                return chimera_read(c1, c2, *h), h, h

            zero = torch.zeros_like(state.h1[:, 0])  # (b, d, n): column -1
            frontier = list(zip(state.h1.unbind(1), state.h2.unbind(1), strict=True))
            y, frontier = raster_scan(cell, packed, frontier, (zero, zero))
            state = ChimeraState(*(torch.stack(part, dim=1) for part in zip(*frontier,
                                                                              strict=True)))
        return self.out_proj(y + self.D * x), state

    def init_state(self, batch_size, width=1, *, device=None, dtype=None):
        """Zero states of one row of `width` cells: ChimeraState(h1, h2), (b, W, d, n) each."""
        opts = self.state_options(device, dtype)
        shape = (batch_size, width, self.d_model, self.d_state)
        return ChimeraState(torch.zeros(shape, **opts), torch.zeros(shape, **opts))

    def state_size(self, width=1):
        """2 * width * d_model * d_state floats."""
        return 2 * width * self.d_model * self.d_state

    def extra_repr(self):
        return f"d_model={self.d_model}, d_state={self.d_state}"

