"""Chimera's 2-D selective state-space recurrence over a grid of time x variates.

Behrouz, Santacatterina & Zabih 2024, "Chimera: Effectively Modeling Multivariate Time Series
with 2-Dimensional State Space Models" (NeurIPS), after the 2-D (Roesser) SSM: every cell
(i, j) of a grid (rows i = time, columns j = variates) holds two states per channel and state
coordinate, h1 carried along time and h2 carried along the variates,

    h1[i, j] = a1[i, j] * h1[i-1, j] + a2[i, j] * h2[i-1, j] + u1[i, j]
    h2[i, j] = a3[i, j] * h1[i, j-1] + a4[i, j] * h2[i, j-1] + u2[i, j]
    y[i, j]  = sum_n C1[i, j, n] h1[i, j, :, n] + C2[i, j, n] h2[i, j, :, n]

with input-dependent (selective) coefficients a1..a4 (the discretised transitions), inputs
u1 = B1 x dt1 and u2 = B2 x dt2, and read-outs C1, C2 (the mixer computes them from the
input). Row -1 is the state given (a row block's start), column -1 is zero.

Closed form (the sum over lattice paths that the paper's 2-D parallel scan evaluates): with
s = (h1, h2), T[i, j] = [[a1, a2], [0, 0]] the step entering (i, j) from above and
L[i, j] = [[0, 0], [a3, a4]] the step entering from the left,
s[i, j] = sum over cells (p, q) <= (i, j) and over every monotone path from (p, q) to (i, j)
of the product of the step matrices along it, applied to u[p, q] (tests/test_mixers_2d_b.py
checks the forms against this sum).

Forms: `chimera_step` (one cell: the specification), `chimera_rows` (each row at once: h1
elementwise from the row above, h2 by a prefix scan along the row; rows in order).
Shapes: coefficients and inputs (b, H, W, d, n); C1, C2 (b, H, W, n); the state
`ChimeraState(h1, h2)`, each (b, W, d, n), the last row's states.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from seqmem.ops.loops import float32_recurrence
from seqmem.ops.scan import linear_recurrence


class ChimeraState(NamedTuple):
    """The states of one row of cells: h1 (along time) and h2 (along variates), (b, W, d, n)."""

    h1: Tensor
    h2: Tensor


@float32_recurrence
def chimera_step(a1: Tensor, a2: Tensor, a3: Tensor, a4: Tensor, u1: Tensor, u2: Tensor,
                 up: tuple[Tensor, Tensor], left: tuple[Tensor, Tensor]
                 ) -> tuple[Tensor, Tensor]:
    """One cell: (h1, h2) from the cell above `up` = (h1, h2) and the cell to the left `left`.

    a1..a4, u1, u2, the parts of up and left: (b, d, n) -> h1, h2 (b, d, n)."""
    h1 = a1 * up[0] + a2 * up[1] + u1
    h2 = a3 * left[0] + a4 * left[1] + u2
    return h1, h2


def chimera_read(C1: Tensor, C2: Tensor, h1: Tensor, h2: Tensor) -> Tensor:
    """y = sum_n C1[n] h1[:, n] + C2[n] h2[:, n]: C (..., n), h (..., d, n) -> (..., d)."""
    return (h1 * C1.unsqueeze(-2)).sum(-1) + (h2 * C2.unsqueeze(-2)).sum(-1)


@float32_recurrence
def chimera_rows(a1: Tensor, a2: Tensor, a3: Tensor, a4: Tensor, u1: Tensor, u2: Tensor,
                 C1: Tensor, C2: Tensor, state: ChimeraState) -> tuple[Tensor, ChimeraState]:
    """The grid row by row, each row at once: h1 from the row above (elementwise), then
    h2[j] = a4[j] h2[j-1] + (a3[j] h1[j-1] + u2[j]) along the row by a prefix scan
    (`ops.scan.linear_recurrence`, log2(W) rounds). Returns y (b, H, W, d) and the last row's
    state."""
    up1, up2 = state
    ys = []
    for i in range(a1.shape[1]):
        h1 = a1[:, i] * up1 + a2[:, i] * up2 + u1[:, i]  # (b, W, d, n)
        left1 = torch.cat([torch.zeros_like(h1[:, :1]), h1[:, :-1]], dim=1)  # h1[j-1]
        h2 = linear_recurrence(a4[:, i], a3[:, i] * left1 + u2[:, i],
                               torch.zeros_like(h1[:, 0]), dim=1)  # (b, W, d, n)
        ys.append(chimera_read(C1[:, i], C2[:, i], h1, h2))
        up1, up2 = h1, h2
    return torch.stack(ys, dim=1), ChimeraState(up1, up2)
