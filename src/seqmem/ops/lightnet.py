"""LightNet's additive linear recurrence (Qin et al. 2024, "You Only Scan Once: Efficient
Multi-dimension Sequential Modeling with LightNet"), 1-D form.

The key's normaliser is accumulated additively, z_t = log(e^{z_{t-1}} + e^{k_t}) per key
channel, and the state is the e^k-weighted average of k-v outer products:

    S_t = e^{z_{t-1} - z_t} S_{t-1} + e^{k_t - z_t} v_t^T,     o_t = q_t^T S_t,

i.e. S_t = sum_{j<=t} e^{k_j - z_t} v_j^T: a linear recurrence whose decay e^{z_{t-1} - z_t}
follows from the additive normaliser rather than from a learned multiplicative gate. The empty
state has z = EMPTY (standing in for -inf) and S = 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class LightNetState(NamedTuple):
    """S (b, h, d_k, d_v) the normalised k-v memory; z (b, h, d_k) the log-normaliser."""

    S: Tensor
    z: Tensor


def lightnet_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, state: LightNetState
                  ) -> tuple[Tensor, LightNetState]:
    """One step (the specification): q_t, k_t (b, h, d_k), v_t (b, h, d_v) -> o_t (b, h, d_v)."""
    z = torch.logaddexp(state.z, k_t)  # (b, h, d_k)
    S = (torch.exp(state.z - z)[..., None] * state.S
         + torch.exp(k_t - z)[..., None] * v_t[:, :, None, :])  # (b, h, d_k, d_v)
    return (q_t[..., None] * S).sum(dim=-2), LightNetState(S, z)


def lightnet_chunk(q: Tensor, k: Tensor, v: Tensor, state: LightNetState, chunk_size: int
                   ) -> tuple[Tensor, LightNetState]:
    """The sequence in chunks: q, k (b, t, h, d_k), v (b, t, h, d_v) -> o (b, t, h, d_v).

    Within a chunk o_i = (q_i e^{z_prev - z_i}) . S_prev + sum_{j<=i} (q_i . e^{k_j - z_i}) v_j,
    every exponent <= 0 (z_i >= k_j for j <= i); the state is carried from chunk to chunk.
    """
    z_all = torch.logcumsumexp(torch.cat([state.z[:, None], k], dim=1), dim=1)[:, 1:]
    S, z_prev = state.S, state.z
    outs = []
    for start in range(0, q.shape[1], chunk_size):
        qc, kc, vc = (a[:, start:start + chunk_size] for a in (q, k, v))  # (b, c, h, .)
        zc = z_all[:, start:start + chunk_size]  # (b, c, h, d_k)
        c = qc.shape[1]
        inter = torch.einsum("bihk,bhkv->bihv", qc * torch.exp(z_prev[:, None] - zc), S)
        causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()  # (i, j)
        diff = kc[:, None] - zc[:, :, None]  # (b, i, j, h, d_k)
        w = torch.where(causal[None, :, :, None, None], diff, -torch.inf).exp()
        scores = torch.einsum("bihk,bijhk->bijh", qc, w)  # (b, i, j, h)
        outs.append(inter + torch.einsum("bijh,bjhv->bihv", scores, vc))
        z_last = zc[:, -1]  # (b, h, d_k)
        S = (torch.exp(z_prev - z_last)[..., None] * S
             + torch.einsum("bjhk,bjhv->bhkv", torch.exp(kc - z_last[:, None]), vc))
        z_prev = z_last
    return torch.cat(outs, dim=1), LightNetState(S, z_prev)
