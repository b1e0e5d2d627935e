"""LightNet's additive recurrence over a grid (Qin et al. 2024, "You Only Scan Once: Efficient
Multi-dimension Sequential Modeling with LightNet"), with its multi-dimensional positional
encodings MD-LRPE and MD-TPE.

The additive recurrence (`seqmem.ops.lightnet`) keeps S = sum_j e^{k_j - z} v_j^T with
z = log sum_j e^{k_j}: the weight of a cell depends on its own key and on the normaliser, not
on the order in which the cells were visited. So one scan of the grid (raster order here)
gives every cell the state of all cells before it, and the state of a set of cells is the
same whichever order visits them: the multi-directional scans a multiplicative decay needs
are not needed (tests/test_mixers_2d.py checks both statements).

MD-LRPE (a linearised relative positional encoding over both axes): each key channel c has a
phase phi_c(i, j) = i theta_row_c + j theta_col_c; queries and key weights are doubled into
cosine and sine halves, so that q_t^T S reads sum_j e^{k_j - z} q_t . (cos(phi_t - phi_j)) v_j:
a function of the relative offset (i - i', j - j') only. A state handed to the next block of
rows is rotated by -H theta_row, so that the next block's row 0 reads it relative to itself.

MD-TPE (a Toeplitz positional encoding over both axes): u_ij = sum_{a<K} r_a * x_{i-a, j} +
sum_{1<=a<K} c_a * x_{i, j-a}, per channel, with coefficients r_a, c_a that depend on the
offset a only (a Toeplitz matrix per axis, causal, of width K); the K - 1 input rows above a
block are part of the state.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from seqmem.ops.attention import EMPTY
from seqmem.ops.linear_attention import gla_chunk
from seqmem.ops.loops import float32_recurrence


class LightNet2DState(NamedTuple):
    """S (b, h, m d_k, d_v) the normalised k-v memory (m = 2 with MD-LRPE: cosine and sine
    halves), z (b, h, d_k) the log-normaliser, rows (b, K - 1, W, d) the input rows above
    (MD-TPE of width K; K - 1 = 0 without it)."""

    S: Tensor
    z: Tensor
    rows: Tensor


def lrpe(x: Tensor, phase: Tensor | None) -> Tensor:
    """[x cos(phase), x sin(phase)] along the last dim (x itself if phase is None)."""
    if phase is None:
        return x
    return torch.cat([x * torch.cos(phase), x * torch.sin(phase)], dim=-1)


def grid_phase(theta: Tensor | None, H: int, W: int) -> Tensor | None:
    """phi (H, W, h, d_k) = i theta[0] + j theta[1] for theta (2, h, d_k), or None."""
    if theta is None:
        return None
    i = torch.arange(H, device=theta.device, dtype=theta.dtype)
    j = torch.arange(W, device=theta.device, dtype=theta.dtype)
    return i[:, None, None, None] * theta[0] + j[None, :, None, None] * theta[1]


def rotate_rows(S: Tensor, theta: Tensor | None, H: int) -> Tensor:
    """The state S (b, h, 2 d_k, d_v) expressed relative to H rows further down: its cosine
    and sine halves rotated by -H theta_row (a rotation: exact, norm-preserving)."""
    if theta is None or H == 0:
        return S
    a = (H * theta[0])[None, :, :, None]  # (1, h, d_k, 1)
    c, s = S.chunk(2, dim=2)
    return torch.cat([torch.cos(a) * c + torch.sin(a) * s,
                      torch.cos(a) * s - torch.sin(a) * c], dim=2)


def tpe_cell(x: Tensor, rows: Tensor, i: int, j: int, r: Tensor, c: Tensor) -> Tensor:
    """MD-TPE at cell (i, j) of the block x (b, H, W, d), read from the cells already visited:
    rows (b, K - 1, W, d) are the input rows above the block; r (K, d), c (K, d) (c[0]
    unused). Returns u_ij (b, d)."""
    K = r.shape[0]
    u = torch.zeros_like(x[:, 0, 0])
    for a in range(K):
        above = x[:, i - a, j] if i - a >= 0 else rows[:, K - 1 + i - a, j]
        u = u + r[a] * above
        if a >= 1 and j - a >= 0:
            u = u + c[a] * x[:, i, j - a]
    return u


def tpe_grid(x: Tensor, rows: Tensor, r: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """MD-TPE of the whole block x (b, H, W, d) at once: u (b, H, W, d) and the K - 1 input
    rows above the next block."""
    K, (b, H, W, d) = r.shape[0], x.shape
    ext = torch.cat([rows, x], dim=1)  # (b, K - 1 + H, W, d)
    u = sum(r[a] * ext[:, K - 1 - a:K - 1 - a + H] for a in range(K))
    padded = torch.cat([x.new_zeros(b, H, K - 1, d), x], dim=2)  # (b, H, K - 1 + W, d)
    u = u + sum((c[a] * padded[:, :, K - 1 - a:K - 1 - a + W] for a in range(1, K)),
                torch.zeros_like(x))
    return u, ext[:, ext.shape[1] - (K - 1):]


@float32_recurrence
def lightnet2d_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, phase_t: Tensor | None,
                    S: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One cell (the specification): q_t, k_t (b, h, d_k), v_t (b, h, d_v), phase_t (h, d_k)
    or None; S (b, h, m d_k, d_v), z (b, h, d_k) -> o_t (b, h, d_v), S, z:

        z' = logaddexp(z, k_t),  S' = e^{z - z'} S + lrpe(e^{k_t - z'}) v_t^T,
        o_t = lrpe(q_t)^T S'.
    """
    z_new = torch.logaddexp(z, k_t)  # (b, h, d_k)
    m = 2 if phase_t is not None else 1
    decay = torch.exp(z - z_new).repeat(1, 1, m)  # (b, h, m d_k)
    key = lrpe(torch.exp(k_t - z_new), phase_t)
    S = decay[..., None] * S + key[..., None] * v_t[:, :, None, :]  # (b, h, m d_k, d_v)
    return (lrpe(q_t, phase_t)[..., None] * S).sum(dim=-2), S, z_new


@float32_recurrence
def lightnet2d_chunk(q: Tensor, k: Tensor, v: Tensor, phase: Tensor | None, S: Tensor,
                     z: Tensor, chunk_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """The cells in raster order, in chunks: q, k (b, t, h, d_k), v (b, t, h, d_v), phase
    (t, h, d_k) or None -> o (b, t, h, d_v), S, z. The normalisers z are the logcumsumexp of
    the keys (from the state's z); the recurrence is gated linear attention
    (`ops.linear_attention.gla_chunk`, scale 1) with the log gate z_{t-1} - z_t <= 0 and the
    key lrpe(e^{k_t - z_t}), as in `ops.lightnet.lightnet_chunk` (the empty state's EMPTY z
    handled the same way)."""
    zs = torch.logcumsumexp(torch.cat([z[:, None], k], dim=1), dim=1)
    z_prev, z_all = zs[:, :-1], zs[:, 1:]  # (b, t, h, d_k)
    m = 2 if phase is not None else 1
    g = torch.where(z_prev > EMPTY / 2, z_prev - z_all, 0.0).repeat(1, 1, 1, m)
    S0 = S.masked_fill((z <= EMPTY / 2).repeat(1, 1, m)[..., None], 0.0)
    o, S = gla_chunk(lrpe(q, phase), lrpe(torch.exp(k - z_all), phase), v, g, scale=1.0,
                     state=S0, chunk_size=chunk_size)
    return o, S, z_all[:, -1]
