"""pLSTM over a 2-D grid (Pöppel et al. 2025, "pLSTM: parallelizable Linear Source Transition
Mark networks"): a linear recurrence on the grid's DAG, each cell with an edge in from the left
and one from above, and an edge out to the right and one down. The states live on the edges:

    right_ij = T^{rl} left_ij + T^{ru} up_ij + S^r k_ij v_ij^T
    down_ij  = T^{dl} left_ij + T^{du} up_ij + S^d k_ij v_ij^T
    o_ij     = q_ij^T (M^l left_ij + M^u up_ij + D k_ij v_ij^T)

with left_ij = right_{i, j-1} (0 at j = 0) and up_ij = down_{i-1, j} (the state at i = 0):
Source, Transition and Mark gates, scalars per cell and head, T (..., 2, 2) indexed
[out (right, down), in (left, up)], S (..., 2) [right, down], M (..., 2) [left, up].

The number of paths between two cells grows like a binomial coefficient, so unconstrained
transitions make the state explode with distance. The paper's two modes bound it:
- P-mode (directed propagation, `p_mode_transitions`): each incoming edge's column of T is
  scaled to an absolute sum <= 1, so the total absolute state crossing every anti-diagonal
  never grows: information can travel far along a direction without exploding.
- D-mode (diffusive distribution, `d_mode_transitions`): every entry of T is tau / 2, so an
  edge's state is split evenly between the two outgoing edges; from one source at (0, 0)
  split evenly too (S = (1/2, 1/2)), the state reaching cell (i, j) != (0, 0) is
  tau^{i+j-1} binom(i + j, i) / 2^{i+j}: a binomial (diffusive) kernel, whose mass on each
  anti-diagonal is conserved for tau = 1 and whose width grows like sqrt(i + j).

`plstm_cell` is the specification; `plstm_scan` visits the cells in raster order;
`plstm_rows` runs the rows in sequence, the cells of a row at once (the horizontal recurrence
solved by its matrix of transition products); `plstm_parallel` is the gating-matrix form, all
cells at once (the path sums between every pair of cells, then an attention-like product).
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqmem.ops.loops import float32_recurrence


def p_mode_transitions(t: Tensor) -> Tensor:
    """P-mode: t (..., 2, 2) [out, in] with each column scaled to absolute sum <= 1."""
    return t / t.abs().sum(dim=-2, keepdim=True).clamp(min=1.0)


def d_mode_transitions(tau: Tensor) -> Tensor:
    """D-mode: tau (...,) in [0, 1] -> T (..., 2, 2) with every entry tau / 2."""
    return (tau / 2)[..., None, None].expand(*tau.shape, 2, 2)


@float32_recurrence
def plstm_cell(q: Tensor, k: Tensor, v: Tensor, S: Tensor, T: Tensor, M: Tensor, D: Tensor,
               up: Tensor, left: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One cell (the specification): q, k (b, h, d_k), v (b, h, d_v), S (b, h, 2), T
    (b, h, 2, 2), M (b, h, 2), D (b, h), up and left (b, h, d_k, d_v) -> (o (b, h, d_v),
    down, right)."""
    kv = k[..., :, None] * v[..., None, :]  # (b, h, d_k, d_v)
    g = lambda a: a[..., None, None]  # noqa: E731  (a gate (b, h) on a state)
    right = g(T[..., 0, 0]) * left + g(T[..., 0, 1]) * up + g(S[..., 0]) * kv
    down = g(T[..., 1, 0]) * left + g(T[..., 1, 1]) * up + g(S[..., 1]) * kv
    C = g(M[..., 0]) * left + g(M[..., 1]) * up + g(D) * kv
    return (q[..., :, None] * C).sum(dim=-2), down, right


@float32_recurrence
def plstm_scan(q: Tensor, k: Tensor, v: Tensor, S: Tensor, T: Tensor, M: Tensor, D: Tensor,
               state: Tensor) -> tuple[Tensor, Tensor]:
    """The grid cell by cell in raster order: q, k (b, H, W, h, d_k), v (b, H, W, h, d_v),
    S (b, H, W, h, 2), T (b, H, W, h, 2, 2), M (b, H, W, h, 2), D (b, H, W, h), state
    (b, W, h, d_k, d_v) the down edges above row 0 -> (o (b, H, W, h, d_v), the last row's
    down edges)."""
    H, W = q.shape[1:3]
    frontier = list(state.unbind(1))
    zero = state.new_zeros(state[:, 0].shape)
    rows = []
    for i in range(H):
        left, ys = zero, []
        for j in range(W):
            c = (slice(None), i, j)
            o, frontier[j], left = plstm_cell(q[c], k[c], v[c], S[c], T[c], M[c], D[c],
                                              frontier[j], left)
            ys.append(o)
        rows.append(torch.stack(ys, dim=1))
    return torch.stack(rows, dim=1), torch.stack(frontier, dim=1)


def row_transfer(a: Tensor) -> Tensor:
    """P (..., W, W) with P[j, j'] = prod_{j' < l <= j} a_l for j' <= j, else 0, for a
    (..., W): the horizontal recurrence r_j = a_j r_{j-1} + b_j solved as r = P b."""
    W = a.shape[-1]
    idx = torch.arange(W, device=a.device)
    j, jp, l = idx[:, None, None], idx[None, :, None], idx[None, None, :]
    inside = (jp < l) & (l <= j)  # (W, W, W)
    P = torch.where(inside, a[..., None, None, :], torch.ones_like(a)[..., None, None, :])
    return P.prod(dim=-1) * (idx[None, :] <= idx[:, None]).to(a.dtype)


@float32_recurrence
def plstm_rows(q: Tensor, k: Tensor, v: Tensor, S: Tensor, T: Tensor, M: Tensor, D: Tensor,
               state: Tensor) -> tuple[Tensor, Tensor]:
    """The parallel form of `plstm_scan` (same arguments and results): row by row, each row's
    cells at once. With up_j the down edges above: right = P (T^{ru} up + S^r kv) with P the
    `row_transfer` of T^{rl} along the row, left_j = right_{j-1}, then down and the outputs
    cell-wise."""
    up, ys = state, []  # (b, W, h, d_k, d_v)
    for i in range(q.shape[1]):
        qi, ki, vi, Si, Ti, Mi, Di = (a[:, i] for a in (q, k, v, S, T, M, D))
        g = lambda a: a[..., None, None]  # noqa: E731  (a gate (b, W, h) on a state)
        kv = ki[..., :, None] * vi[..., None, :]  # (b, W, h, d_k, d_v)
        drive = g(Ti[..., 0, 1]) * up + g(Si[..., 0]) * kv
        P = row_transfer(Ti[..., 0, 0].transpose(1, 2))  # (b, h, W, W)
        right = torch.einsum("bhjJ,bJhkv->bjhkv", P, drive)
        left = torch.cat([torch.zeros_like(right[:, :1]), right[:, :-1]], dim=1)
        C = g(Mi[..., 0]) * left + g(Mi[..., 1]) * up + g(Di) * kv
        ys.append((qi[..., :, None] * C).sum(dim=-2))  # (b, W, h, d_v)
        up = g(Ti[..., 1, 0]) * left + g(Ti[..., 1, 1]) * up + g(Si[..., 1]) * kv
    return torch.stack(ys, dim=1), up


@float32_recurrence
def plstm_parallel(q: Tensor, k: Tensor, v: Tensor, S: Tensor, T: Tensor, M: Tensor, D: Tensor,
                   state: Tensor) -> tuple[Tensor, Tensor]:
    """The fully parallel form of `plstm_scan` (same arguments and results), as the paper's
    gating matrix: G[c, c'] = the sum over the DAG's paths from cell c' to cell c of Source x
    Transitions x Mark (D on the diagonal), and G0[c, j] the same from the state's down edge
    above column j. Then

        o_c = sum_{c'} G[c, c'] (q_c . k_c') v_c' + sum_j G0[c, j] q_c^T state_j,

    attention-like in the H W cells. G is the recurrence itself run on scalar states, one per
    source (the H W cells and the W edges above): `plstm_rows` with k = 1 and v one-hot,
    memory (H W)^2 per head instead of d_k d_v per edge; the final down edges come out of the
    same run, as weights over the sources."""
    b, H, W, h, _ = q.shape
    N = H * W
    opts = {"device": q.device, "dtype": q.dtype}
    one = torch.ones(b, H, W, h, 1, **opts)
    src = torch.eye(N + W, **opts)[:N].view(1, H, W, 1, N + W).expand(b, H, W, h, N + W)
    edge = torch.eye(N + W, **opts)[N:].view(1, W, 1, 1, N + W).expand(b, W, h, 1, N + W)
    G, Gd = plstm_rows(one, one, src, S, T, M, D, edge)  # (b, H, W, h, N + W), (b, W, h, 1, .)
    G, Gd = G.flatten(1, 2), Gd[:, :, :, 0]  # (b, N, h, N + W), (b, W, h, N + W)
    qf, kf, vf = q.flatten(1, 2), k.flatten(1, 2), v.flatten(1, 2)  # (b, N, h, .)
    scores = torch.einsum("bchk,bshk->bchs", qf, kf) * G[..., :N]  # (b, N, h, N)
    o = torch.einsum("bchs,bshv->bchv", scores, vf) + torch.einsum(
        "bchj,bchk,bjhkv->bchv", G[..., N:], qf, state)
    down = torch.einsum("bjhs,bshk,bshv->bjhkv", Gd[..., :N], kf, vf) + torch.einsum(
        "bjhi,bihkv->bjhkv", Gd[..., N:], state)
    return o.view(b, H, W, h, -1), down
