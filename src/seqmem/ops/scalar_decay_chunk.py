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
chunk is sequential. Where every |c_t| <= FACTOR_RANGE (30), the decay matrix is factored,
exp(c_t - c_s) = exp(c_t) exp(-c_s), into the queries and keys of one product followed by the
causal mask (no (C, C) exponential at all; no factor beyond e^30); stronger decays take the
masked exponential exp((c_t - c_s) mask) mask, whose exponents are never positive, so nothing
overflows however strong the decay.

Backward (`_ScalarDecayChunk`). The forward saves the chunked inputs, the cumulative log
decays and the state at every chunk's start (n_chunks x d_k x d_v per head, memory linear in
t), never a (C, C) block nor its exponentials. The backward recomputes the masked score blocks
M = scale (Q K^T) * D of all chunks at once (D the masked decay, or the factored form above),
runs the reverse state pass G_{i-1} = alpha_i G_i + (scale f_i Q_i)^T dO_i (G_i = dL/dS at
chunk i's end, f the decay from the chunk's start), and then

    dQ = (dO V^T * scale D) K + scale f (dO S_0^T),    dV = M^T dO + (e K) G,
    dK = (dO V^T * scale D)^T Q + e (V G^T),           e the decay to the chunk's end,
    dc_t = q_t . dq_t - k_t . dk_t  (+ <S_C, G> at the chunk's last token),

the last identity because c enters every factor as exp(c_t) on a query's side and exp(-c_s)
on a key's (as in the chunked kernels of flash-linear-attention); dg is dc summed from t to
the chunk's end, by the backward of the cumulative sum.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from seqmem.ops.loops import chunk, float32_recurrence, unchunk

# A chunk whose cumulative log decays all lie within +-FACTOR_RANGE has its decay matrix
# factored, exp(c_t - c_s) = exp(c_t) exp(-c_s), into the operands of one matrix product (no
# factor beyond e^30, far from overflow in float32, and no cancellation: a product of two
# factors keeps their relative precision); stronger decays take the masked exponential.
FACTOR_RANGE = 30.0


class _Decays(NamedTuple):
    """The decay factors of every chunk, f_t = sg_t exp(c_t) from the chunk's start:
    qf = scale f (..., C), the queries' factor (None: scale alone, no decay); kf = sg_s
    exp(-c_s) (..., C), the keys' factor when factored (None: 1); D (..., C, C) the masked
    decay sg_t sg_s exp(c_t - c_s) times scale when not factored (None when factored);
    tri the (C, C) lower triangle; alpha = sg_C exp(c_C) (..., 1, 1), the chunk's transition
    (None: 1); e = sg_C sg_s exp(c_C - c_s) (..., C), the decay to the chunk's end, when not
    factored (factored, it is alpha kf)."""

    qf: Tensor | None
    kf: Tensor | None
    D: Tensor | None
    tri: Tensor
    alpha: Tensor | None
    e: Tensor | None


def _decays(c: Tensor | None, sg: Tensor | None, C: int, scale: float, like: Tensor,
            factor: bool | None = None) -> _Decays:
    """The decay factors (`_Decays`), factored when every |c| <= FACTOR_RANGE (or as
    `factor` says, the forward's choice repeated in the backward)."""
    tri = torch.ones(C, C, dtype=like.dtype, device=like.device).tril()
    if c is None:
        return _Decays(None, None, None, tri, None, None)
    c_last = c[..., -1:]  # (b, h, n, 1)
    f, alpha = c.exp(), c_last.exp()
    if sg is not None:
        f, alpha = f * sg, alpha * sg[..., -1:]
    if factor if factor is not None else bool(c.abs().amax() <= FACTOR_RANGE):
        kf = (-c).exp()
        return _Decays(f * scale, kf if sg is None else kf * sg, None, tri, alpha[..., None],
                       None)
    diff = c[..., :, None] - c[..., None, :]  # (b, h, n, C, C)
    D = (diff * tri).exp_().mul_(tri * scale)  # masked exponents are 0, then zeroed
    e = (c_last - c).exp()
    if sg is not None:
        D.mul_(sg[..., :, None] * sg[..., None, :])
        e = e * (sg * sg[..., -1:])
    return _Decays(f * scale, None, D, tri, alpha[..., None], e)


def _times(x: Tensor, w: Tensor | float | None) -> Tensor:
    """x (..., C, d) times a per-token weight w (..., C) or a number; None: x as it is."""
    if w is None:
        return x
    return x * w if isinstance(w, float) else x * w[..., None]


def _bmm(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """x + a @ b over the leading (b, h, n) dimensions, as one batched product accumulated
    into x (a fresh contiguous tensor of the caller's), which it returns."""
    x3 = x.view(-1, *x.shape[-2:])
    torch.baddbmm(x3, a.flatten(0, 2), b.flatten(0, 2), out=x3)  # out=, not baddbmm_: the
    return x  # flop counter of `seqmem.bench` counts this one


class _ScalarDecayChunk(torch.autograd.Function):
    """(O, S_T) of the chunked scalar-decay recurrence (module docstring): Q, K (b, h, n, C, d_k),
    V (b, h, n, C, d_v) chunked inputs, c (b, h, n, C) cumulative log decays or None, sg
    (b, h, n, C) cumulative signs (+-1) or None, S0 (b, h, d_k, d_v), scale a float ->
    O (b, h, n, C, d_v), S_T (b, h, d_k, d_v)."""

    @staticmethod
    def forward(ctx, Q, K, V, c, sg, S0, scale):
        dec = _decays(c, sg, Q.shape[-2], scale, Q)
        Qa = _times(Q, scale if dec.qf is None else dec.qf)  # (b, h, n, C, d_k)
        Kb = _times(K, dec.kf)  # (b, h, n, C, d_k)
        if dec.D is None:  # factored (or no decay): one product, then the causal mask
            M = (Qa @ Kb.transpose(-1, -2)).mul_(dec.tri)  # (b, h, n, C, C)
            KV = Kb.transpose(-1, -2) @ V  # (b, h, n, d_k, d_v), times alpha below
            if dec.alpha is not None:
                KV.mul_(dec.alpha)
        else:
            M = (Q @ K.transpose(-1, -2)).mul_(dec.D)
            KV = _times(K, dec.e).transpose(-1, -2) @ V
        # chunk by chunk, each state written where it is kept (a stack of n states costs one
        # more copy; a cumulative sum over chunks, several passes over all the states)
        n = KV.shape[2]
        starts = KV.new_empty(KV.shape)  # (b, h, n, d_k, d_v)
        starts[:, :, 0] = S0
        for i in range(n):
            S_prev = starts[:, :, i]
            S = starts[:, :, i + 1] if i + 1 < n else None  # None: the final state, fresh
            if dec.alpha is None:
                S = torch.add(KV[:, :, i], S_prev, out=S)  # (b, h, d_k, d_v)
            else:
                S = torch.addcmul(KV[:, :, i], dec.alpha[:, :, i], S_prev, out=S)
        O = _bmm(Qa @ starts, M, V)  # (b, h, n, C, d_v): S_0 decayed to t, plus the chunk
        ctx.factored = dec.D is None  # then the factored operands are kept, not Q and K
        ctx.save_for_backward(*((Qa, Kb) if ctx.factored else (Q, K)), V, c, sg, starts, S)
        ctx.scale = scale
        return O, S

    @staticmethod
    @float32_recurrence
    @once_differentiable
    def backward(ctx, dO, dS):
        factored = ctx.factored
        Q, K, V, c, sg, starts, S_T = ctx.saved_tensors  # Q, K: Qa, Kb when factored
        need_q, need_k, need_v, need_c, _, need_s0, _ = ctx.needs_input_grad
        need_c = need_c and c is not None
        dO, G = dO.contiguous(), dS  # G: dL/dS at the last chunk's end (zeros if unused)
        dec = _decays(c, sg, Q.shape[-2], ctx.scale, Q, factored)
        qf = ctx.scale if dec.qf is None else dec.qf
        Qa = Q if factored else _times(Q, qf)  # (b, h, n, C, d_k)
        R = Qa.transpose(-1, -2) @ dO  # (b, h, n, d_k, d_v): dL/dS_start from the outputs
        # the reverse state pass: Gs[i] = dL/dS at chunk i's end; with a decay to learn, also
        # SG[i] = <S_i, G_i>, S_i the state at chunk i's end, while both are in cache
        n = Q.shape[2]
        Gs, SG = R.new_empty(R.shape), R.new_empty(R.shape[:3])  # (b, h, n, ...)
        Gs[:, :, -1] = G
        for i in reversed(range(n)):
            G = Gs[:, :, i]
            if need_c:
                S_i = S_T if i == n - 1 else starts[:, :, i + 1]
                SG[:, :, i] = torch.linalg.vecdot(S_i.flatten(-2), G.flatten(-2))
            out = Gs[:, :, i - 1] if i > 0 else None  # None: dL/dS_0, fresh
            if dec.alpha is None:
                dS0 = torch.add(R[:, :, i], G, out=out)  # (b, h, d_k, d_v)
            else:
                dS0 = torch.addcmul(R[:, :, i], dec.alpha[:, :, i], G, out=out)
        Kb = K  # used only when factored
        # G as the keys see it: Ke^T = (alpha Kb)^T when factored, so alpha goes onto G
        Gk = Gs if not factored or dec.alpha is None else Gs * dec.alpha
        dP = (dO @ V.transpose(-1, -2)).mul_(dec.tri if factored else dec.D)  # (b,h,n,C,C)
        dQ = dK = dV = dc = None
        # factored: dL/dQa and dL/dKb first (Q . dQ = Qa . dL/dQa for dc), then through
        # Qa = qf Q and Kb = kf K
        if need_q or need_c:
            if factored:
                dQ = _bmm(dO @ starts.transpose(-1, -2), dP, Kb)
            else:
                dQ = _bmm(_times(dO @ starts.transpose(-1, -2), qf), dP, K)
        if need_k or need_c:
            VG = V @ Gk.transpose(-1, -2)  # (b, h, n, C, d_k)
            if factored:
                dK = _bmm(VG, dP.transpose(-1, -2), Qa)
            else:
                dK = _bmm(_times(VG, dec.e), dP.transpose(-1, -2), Q)
        if need_v:
            if factored:  # the scores recomputed
                M = (Qa @ Kb.transpose(-1, -2)).mul_(dec.tri)
                dV = _bmm(Kb @ Gk, M.transpose(-1, -2), dO)
            else:
                M = (Q @ K.transpose(-1, -2)).mul_(dec.D)
                dV = _bmm(_times(K, dec.e) @ Gs, M.transpose(-1, -2), dO)
        if need_c:
            dc = torch.linalg.vecdot(Q, dQ) - torch.linalg.vecdot(K, dK)  # (b, h, n, C)
            dc[..., -1] += SG
        if factored:  # in place: both are fresh
            if dQ is not None:
                dQ.mul_(qf if isinstance(qf, float) else qf[..., None])
            if dK is not None and dec.kf is not None:
                dK.mul_(dec.kf[..., None])
        return (dQ if need_q else None, dK if need_k else None, dV, dc, None,
                dS0 if need_s0 else None, None)


@float32_recurrence
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
