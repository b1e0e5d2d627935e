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

from seqmem.ops.attention import EMPTY
from seqmem.ops.linear_attention import gla_chunk
from seqmem.ops.loops import float32_recurrence


class LightNetState(NamedTuple):
    """S (b, h, d_k, d_v) the normalised k-v memory; z (b, h, d_k) the log-normaliser."""

    S: Tensor
    z: Tensor


@float32_recurrence
def lightnet_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, state: LightNetState
                  ) -> tuple[Tensor, LightNetState]:
    """One step (the specification): q_t, k_t (b, h, d_k), v_t (b, h, d_v) -> o_t (b, h, d_v)."""
    z = torch.logaddexp(state.z, k_t)  # (b, h, d_k)
    S = (torch.exp(state.z - z)[..., None] * state.S
         + torch.exp(k_t - z)[..., None] * v_t[:, :, None, :])  # (b, h, d_k, d_v)
    return (q_t[..., None] * S).sum(dim=-2), LightNetState(S, z)


@float32_recurrence
def lightnet_chunk(q: Tensor, k: Tensor, v: Tensor, state: LightNetState, chunk_size: int
                   ) -> tuple[Tensor, LightNetState]:
    """The sequence in chunks: q, k (b, t, h, d_k), v (b, t, h, d_v) -> o (b, t, h, d_v).

    The recurrence is gated linear attention (`ops.linear_attention.gla`, scale 1) with the
    per-channel log forget gate g_t = z_{t-1} - z_t <= 0 and the key e^{k_t - z_t} <= 1, the
    normalisers z_t = logcumsumexp of the keys (from the state's z) computed for the whole
    sequence first; so it runs in gla's chunked form, whose exponents are never positive and
    whose memory is linear in t. From the empty state (z = EMPTY) the first gate is set to 0:
    and S is zeroed there instead (what the exact decay e^{EMPTY - z} = 0 does, gradient
    included), as EMPTY inside gla's cumulative sums would cancel the precision of the gates
    that follow.
    """
    if q.shape[1] == 0:
        return v.new_zeros(*q.shape[:3], v.shape[-1]), state
    z = torch.logcumsumexp(torch.cat([state.z[:, None], k], dim=1), dim=1)  # z_{-1}, ..., z_{t-1}
    z_prev, z_all = z[:, :-1], z[:, 1:]  # (b, t, h, d_k)
    g = torch.where(z_prev > EMPTY / 2, z_prev - z_all, 0.0)
    S0 = state.S.masked_fill((state.z <= EMPTY / 2)[..., None], 0.0)  # what the decay 0 leaves
    o, S = gla_chunk(q, torch.exp(k - z_all), v, g, scale=1.0, state=S0, chunk_size=chunk_size)
    return o, LightNetState(S, z_all[:, -1])
