"""The chunked form of the matrix-state RNNs with one scalar decay per token and head, with a
hand-written backward: linear attention, retention (`ops.linear_attention`) and Mamba-2's SSD
(`ops.selective`, where q = C, k = B, v = x and the state is transposed).

Per head, with row vectors q_t, k_t (d_k), v_t (d_v), a transition alpha_t and state S (d_k, d_v):

    S_t = alpha_t S_{t-1} + k_t^T v_t,   o_t = scale q_t S_t,

alpha_t = exp(g_t) (g_t a log decay, g = None: alpha = 1) or, for transitions in [-1, 1], the
sign (-1)^neg_t times exp(g_t), g_t = log|alpha_t|. Inside a chunk of C tokens starting from
S_0, with c_t = sum_{l<=t} g_l and sg_t the product of the signs since the chunk's start,

    o_t = scale sg_t exp(c_t) q_t S_0 + scale sum_{s<=t} sg_t sg_s exp(c_t - c_s) (q_t . k_s) v_s,
    S_C = sg_C exp(c_C) S_0 + sum_s sg_C sg_s exp(c_C - c_s) k_s^T v_s,

every chunk at once as batched matrix products; only the carry of the state from chunk to
chunk is sequential. Every exponent is c_t - c_s with s <= t (masked before the exponential),
so no factor exceeds 1 however strong the decay.

Backward (`_ScalarDecayChunk`). The forward saves the chunked inputs, the cumulative log
decays and the state at every chunk's start (n_chunks x d_k x d_v per head, memory linear in
t), never a (C, C) block. The backward recomputes the masked score blocks M = scale (Q K^T) * D
of all chunks at once, runs the reverse state pass G_{i-1} = alpha_i G_i + (scale f_i Q_i)^T dO_i
(G_i = dL/dS at chunk i's end, f the decay from the chunk's start), and then

    dQ = (dO V^T * scale D) K + scale f (dO S_0^T),    dV = M^T dO + (e K) G,
    dK = (dO V^T * scale D)^T Q + e (V G^T),           e the decay to the chunk's end,
    dc_t = q_t . dq_t - k_t . dk_t  (+ <S_C, G> at the chunk's last token),

the last identity because c enters every factor as exp(c_t) on a query's side and exp(-c_s)
on a key's (as in the chunked kernels of flash-linear-attention); dg is dc summed from t to
the chunk's end, by the backward of the cumulative sum.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from seqmem.ops.loops import chunk, unchunk


def _factors(c: Tensor | None, sg: Tensor | None, C: int, scale: float, like: Tensor):
    """The decay factors of a chunk: D (scale times the masked causal decay, (..., C, C)),
    f = sg_t exp(c_t) (from the start), e = sg_C sg_s exp(c_C - c_s) (to the end) and
    alpha = sg_C exp(c_C) (over the chunk) as (..., C) and (..., 1, 1); without decay
    (c None) D is scale times the lower triangle and f, e, alpha are None (all ones)."""
    tri = torch.ones(C, C, dtype=like.dtype, device=like.device).tril()
    if c is None:
        return tri * scale, None, None, None
    diff = c[..., :, None] - c[..., None, :]  # (b, h, n, C, C)
    D = (diff * tri).exp_().mul_(tri * scale)  # masked exponents are 0, then zeroed
    c_last = c[..., -1:]  # (b, h, n, 1)
    f, e, alpha = c.exp(), (c_last - c).exp(), c_last.exp()
    if sg is not None:
        sg_last = sg[..., -1:]
        D.mul_(sg[..., :, None] * sg[..., None, :])
        f, e, alpha = f * sg, e * (sg * sg_last), alpha * sg_last
    return D, f, e, alpha[..., None]


def _scaled(x: Tensor, w: Tensor | None) -> Tensor:
    """x (..., C, d) times a per-token weight w (..., C); w None: x as it is."""
    return x if w is None else x * w[..., None]


class _ScalarDecayChunk(torch.autograd.Function):
    """(O, S_T) of the chunked scalar-decay recurrence (module docstring): Q, K (b, h, n, C, d_k),
    V (b, h, n, C, d_v) chunked inputs, c (b, h, n, C) cumulative log decays or None, sg
    (b, h, n, C) cumulative signs (+-1) or None, S0 (b, h, d_k, d_v), scale a float ->
    O (b, h, n, C, d_v), S_T (b, h, d_k, d_v)."""

    @staticmethod
    def forward(ctx, Q, K, V, c, sg, S0, scale):
        C = Q.shape[-2]
        D, f, e, alpha = _factors(c, sg, C, scale, Q)
        KV = _scaled(K, e).transpose(-1, -2) @ V  # (b, h, n, d_k, d_v)
        if alpha is None:  # no decay: the states are sums of the chunks' KV
            starts = KV.cumsum(2).sub_(KV).add_(S0[:, :, None])  # (b, h, n, d_k, d_v)
            S = starts[:, :, -1] + KV[:, :, -1]
        else:
            starts_l, S = [], S0
            for a_i, KV_i in zip(alpha.unbind(2), KV.unbind(2), strict=True):
                starts_l.append(S)
                S = a_i * S + KV_i  # (b, h, d_k, d_v)
            starts = torch.stack(starts_l, dim=2)  # (b, h, n, d_k, d_v)
        M = (Q @ K.transpose(-1, -2)).mul_(D)  # (b, h, n, C, C)
        QS = (_scaled(Q, f) @ starts).mul_(scale)  # (b, h, n, C, d_v): S_0 decayed to t
        O = torch.baddbmm(QS.flatten(0, 2), M.flatten(0, 2), V.flatten(0, 2)).view(QS.shape)
        ctx.save_for_backward(Q, K, V, c, sg, starts, S)
        ctx.scale = scale
        return O, S

    @staticmethod
    @once_differentiable
    def backward(ctx, dO, dS):
        Q, K, V, c, sg, starts, S_T = ctx.saved_tensors
        need_q, need_k, need_v, need_c, _, need_s0, _ = ctx.needs_input_grad
        need_c = need_c and c is not None
        scale, C = ctx.scale, Q.shape[-2]
        dO, G = dO.contiguous(), dS  # G: dL/dS at the last chunk's end (zeros if unused)
        D, f, e, alpha = _factors(c, sg, C, scale, Q)
        Qf = _scaled(Q, f) * scale  # (b, h, n, C, d_k)
        R = Qf.transpose(-1, -2) @ dO  # (b, h, n, d_k, d_v): dL/dS_start from the outputs
        # the reverse state pass: Gs[i] = dL/dS at chunk i's end
        if alpha is None:
            tail = R.flip(2).cumsum(2).flip(2)  # sum_{j>=i} R_j
            Gs = (tail - R).add_(G[:, :, None])  # (b, h, n, d_k, d_v)
            dS0 = tail[:, :, 0] + G
        else:
            Gs_l = []
            for a_i, R_i in zip(reversed(alpha.unbind(2)), reversed(R.unbind(2)), strict=True):
                Gs_l.append(G)
                G = a_i * G + R_i  # (b, h, d_k, d_v)
            Gs = torch.stack(Gs_l[::-1], dim=2)
            dS0 = G
        Ke = _scaled(K, e)  # (b, h, n, C, d_k): k_s decayed to the chunk's end
        dQ = dK = dV = dc = None
        dP = (dO @ V.transpose(-1, -2)).mul_(D)  # (b, h, n, C, C): dL/d(Q K^T)
        if need_q or need_c:
            dQ = dO @ starts.transpose(-1, -2)  # (b, h, n, C, d_k)
            dQ = (dQ if f is None else dQ * f[..., None]).mul_(scale)
            dQ = torch.baddbmm(dQ.flatten(0, 2), dP.flatten(0, 2), K.flatten(0, 2)
                               ).view(Q.shape)
        if need_k or need_c:
            dK = _scaled(V @ Gs.transpose(-1, -2), e)  # (b, h, n, C, d_k)
            dK = torch.baddbmm(dK.flatten(0, 2), dP.transpose(-1, -2).flatten(0, 2),
                               Q.flatten(0, 2)).view(K.shape)
        if need_v:
            M = (Q @ K.transpose(-1, -2)).mul_(D)  # (b, h, n, C, C): recomputed
            dV = Ke @ Gs  # (b, h, n, C, d_v)
            dV = torch.baddbmm(dV.flatten(0, 2), M.transpose(-1, -2).flatten(0, 2),
                               dO.flatten(0, 2)).view(V.shape)
        if need_c:
            dc = (Q * dQ).sum(-1) - (K * dK).sum(-1)  # (b, h, n, C)
            ends = torch.cat([starts[:, :, 1:], S_T[:, :, None]], dim=2)  # S at chunk ends
            dc[..., -1] += (ends * Gs).sum((-1, -2))
        return (dQ if need_q else None, dK if need_k else None, dV, dc, None,
                dS0 if need_s0 else None, None)


def scalar_decay_chunked(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, state: Tensor,
                         chunk_size: int, *, scale: float = 1.0, neg: Tensor | None = None
                         ) -> tuple[Tensor, Tensor]:
    """S_t = alpha_t S_{t-1} + k_t^T v_t, o_t = scale q_t S_t in chunks of chunk_size tokens
    with the hand-written backward of `_ScalarDecayChunk` (module docstring).

    Args:
        q, k: (b, t, h, d_k), t >= 1. v: (b, t, h, d_v).
        g: (b, t, h) log|alpha_t|, or None for alpha = 1 (no decay).
        state: (b, h, d_k, d_v) the state before the first token.
        chunk_size: tokens per chunk (the last chunk is padded with tokens that change nothing).
        scale: the factor of the queries.
        neg: (b, t, h) 1 where alpha_t < 0, else 0; None: every alpha_t > 0.

    Returns (o (b, t, h, d_v), S_T (b, h, d_k, d_v))."""
    t = q.shape[1]
    Q, K, V = chunk(q, chunk_size), chunk(k, chunk_size), chunk(v, chunk_size)  # (b,h,n,C,.)
    c = None if g is None else chunk(g, chunk_size).cumsum(-1)  # (b, h, n, C); padding: 0
    sg = None if neg is None else 1 - 2 * torch.remainder(chunk(neg, chunk_size).cumsum(-1), 2)
    O, S = _ScalarDecayChunk.apply(Q, K, V, c, sg, state, float(scale))
    return unchunk(O, t), S
