"""The chunked form of gated linear attention (`ops.linear_attention.gla`) with a hand-written
backward pass. Per head, inside a chunk of L tokens starting from the state S_0, with
B_t = sum_{l<=t} g_l the cumulative log gate since the chunk's start (Yang et al. 2023, GLA):

    o_t   = (q_t * exp(B_t)) S_0 + sum_{s<=t} A[t, s] v_s,
    A[t, s] = sum_c q_tc k_sc exp(B_tc - B_sc)                 (the intra-chunk scores)
    S_L   = diag(exp(B_L)) S_0 + sum_s (k_s * exp(B_L - B_s))^T v_s.

The intra-chunk scores are built by dyadic blocks (halves, quarters, ... of the chunk): a pair
s < t meets at the midpoint r of the smallest block holding both, as q_t exp(B_t - B_r) .
k_s exp(B_r - B_s), both exponents <= 0 for forget gates, and every level of blocks is one
batched matrix product; the smallest levels, whose blocks are too small for a matrix product
to pay, are written as products and sums of their few pairs.

Forward: computed without a graph; saved are the chunked inputs (q scaled, k, v), the
cumulative gates B and the state at every chunk's start (n_chunks x d_k x d_v per head): memory
linear in t, no (L, L) score block and no exponential of one. Backward, with dO and dS_final:

    reverse state pass   dS_{end of chunk i-1} = exp(B_L^i) dS_{end of chunk i}
                                                 + (q^i * exp(B^i))^T dO^i,
    every chunk at once  dq = dO S_0^T * exp(B) + (intra), dk = v dS_end^T * exp(B_L - B)
                         + (intra), dv = (k * exp(B_L - B)) dS_end + A^T dO,
    gates                dB = q * dq - k * dk, plus at the chunk's last token
                         sum_v exp(B_L) S_0 dS_end + sum_s k * (the state part of dk),
                         dg = the reverse cumulative sum of dB inside each chunk,

where the intra-chunk part recomputes each level's blocks, one batched product per level over
a group of chunks. dB = q dq - k dk holds because A[t, s] depends on B only through
B_tc - B_sc. Every per-token pass, forward and backward, runs over groups of chunks of about
`SLICE_TOKENS` tokens rather than over all chunks at once: the exponentials, products and sums
of every level (the elementwise work, most of the time on a CPU) then stay in the cache; only
the state carried across chunks runs over all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from seqmem.ops.loops import carry, chunk, float32_recurrence, unchunk

# Levels whose half-blocks have at most this many tokens are computed pair by pair with
# products and sums: a batched matrix product of (2 x 64) @ (64 x 2) blocks costs more in
# per-matrix overhead than its arithmetic.
_PAIRWISE = 2
# Tokens per group of chunks in the per-token passes (see `GlaChunk`).
SLICE_TOKENS = 2048


def _halves(z: Tensor, L: int, size: int) -> tuple[Tensor, Tensor]:
    """The first and second halves of every block of `size` tokens: (..., L, d) ->
    2 x (..., L/size, size/2, d), views (unbind, whose backward would be one stack)."""
    return z.unflatten(-2, (L // size, 2, size // 2)).unbind(-3)


def _half(z: Tensor, L: int, size: int, i: int) -> Tensor:
    """Half i (0: first, 1: second) of every block of `size` tokens, a view to write into."""
    return z.unflatten(-2, (L // size, 2, size // 2))[..., i, :, :]


def _level_factors(Q: Tensor, K: Tensor, B: Tensor, L: int, size: int
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For the blocks of one level: q_t exp(B_t - B_r) (second halves), k_s exp(B_r - B_s)
    (first halves), r the block's midpoint, and the two exponentials (all <= 1)."""
    (_, q2), (k1, _), (b1, b2) = (_halves(z, L, size) for z in (Q, K, B))
    ref = b1[..., -1:, :]  # (..., L/size, 1, d_k): B at the midpoint
    eq, ek = (b2 - ref).exp(), (ref - b1).exp()  # (..., L/size, half, d_k)
    return q2 * eq, k1 * ek, eq, ek


def _pair_scores(Qt: Tensor, Ks: Tensor) -> Tensor:
    """Qt @ Ks^T for tiny blocks, as products and sums: (..., m, d), (..., m, d) -> (..., m, m)."""
    return (Qt[..., :, None, :] * Ks[..., None, :, :]).sum(-1)


def _pair_apply(A: Tensor, X: Tensor) -> Tensor:
    """A @ X for tiny blocks: (..., m, m), (..., m, d) -> (..., m, d)."""
    return (A[..., :, :, None] * X[..., None, :, :]).sum(-2)


def intra_forward(Q: Tensor, K: Tensor, V: Tensor, B: Tensor, *, out: Tensor | None = None
                  ) -> Tensor:
    """o_t = sum_{s<=t} sum_c q_tc k_sc exp(B_tc - B_sc) v_s within blocks of L tokens, L a
    power of two: Q, K, B (..., L, d_k), V (..., L, d_v) -> (..., L, d_v), written into `out`
    when given."""
    L = Q.shape[-2]
    qk = (Q * K).sum(-1, keepdim=True)  # (..., L, 1): s = t, where exp(0) = 1
    o = qk * V if out is None else torch.mul(qk, V, out=out)  # (..., L, d_v)
    size = L
    while size > 1:
        half = size // 2
        Qt, Ks, _, _ = _level_factors(Q, K, B, L, size)  # (..., L/size, half, d_k)
        v1 = _halves(V, L, size)[0]  # (..., L/size, half, d_v)
        if half <= _PAIRWISE:
            part = _pair_apply(_pair_scores(Qt, Ks), v1)
        else:  # contiguous operands: a strided batch of matrix products is slow
            part = (Qt @ Ks.transpose(-1, -2)) @ v1.contiguous()  # (..., L/size, half, d_v)
        _half(o, L, size, 1).add_(part)  # into the second halves
        size = half
    return o


def intra_backward(Q: Tensor, K: Tensor, V: Tensor, B: Tensor, dO: Tensor, *,
                   out: tuple[Tensor, Tensor, Tensor] | None = None
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients (dQ, dK, dV) of `intra_forward`'s output against dO (..., L, d_v), the
    blocks recomputed level by level (each level one batched product over every chunk),
    written into `out` when given."""
    L = Q.shape[-2]
    qk = (Q * K).sum(-1, keepdim=True)  # (..., L, 1): the diagonal s = t
    dov = (dO * V).sum(-1, keepdim=True)  # (..., L, 1)
    if out is None:
        dQ, dK, dV = dov * K, dov * Q, qk * dO
    else:
        dQ, dK, dV = (torch.mul(x, y, out=z) for x, y, z in zip((dov, dov, qk), (K, Q, dO), out,
                                                                 strict=True))
    size = L
    while size > 1:
        half = size // 2
        Qt, Ks, eq, ek = _level_factors(Q, K, B, L, size)  # (..., L/size, half, d_k)
        v1 = _halves(V, L, size)[0]  # (..., L/size, half, d_v)
        do2 = _halves(dO, L, size)[1]  # (..., L/size, half, d_v)
        if half <= _PAIRWISE:
            A = _pair_scores(Qt, Ks)  # (..., L/size, half, half)
            dA = _pair_scores(do2, v1)
            dv1 = _pair_apply(A.transpose(-1, -2), do2)
            dQt = _pair_apply(dA, Ks)
            dKs = _pair_apply(dA.transpose(-1, -2), Qt)
        else:
            do2, v1 = do2.contiguous(), v1.contiguous()
            A = Qt @ Ks.transpose(-1, -2)  # (..., L/size, half, half), recomputed
            dA = do2 @ v1.transpose(-1, -2)
            dv1 = A.transpose(-1, -2) @ do2
            dQt = dA @ Ks
            dKs = dA.transpose(-1, -2) @ Qt
        _half(dV, L, size, 0).add_(dv1)
        _half(dQ, L, size, 1).addcmul_(dQt, eq)
        _half(dK, L, size, 0).addcmul_(dKs, ek)
        size = half
    return dQ, dK, dV


def _pad(z: Tensor, L: int) -> Tensor:
    """(b, h, n, C, d) -> (b, h, n, L, d): identity tokens (zeros) at the end of every chunk."""
    return F.pad(z, (0, 0, 0, L - z.shape[-2])) if z.shape[-2] < L else z


def _slices(n: int, L: int) -> list[slice]:
    """Consecutive groups of chunks, about `SLICE_TOKENS` tokens each, out of n chunks of L."""
    m = max(1, SLICE_TOKENS // L)
    return [slice(i, min(i + m, n)) for i in range(0, n, m)]


def _chunk_backward(Q: Tensor, K: Tensor, V: Tensor, B: Tensor, starts: Tensor, ends: Tensor,
                    dO: Tensor, out: tuple[Tensor, Tensor, Tensor, Tensor]) -> None:
    """dQ, dK, dV, dG of a group of chunks (N, L, d) into out, given dO (N, L, d_v) and ends
    (N, d_k, d_v), the gradient of the state at every chunk's end (after the reverse state
    pass)."""
    B_last = B[..., -1:, :]  # (N, 1, d_k)
    eK = (B_last - B).exp()  # (N, L, d_k)
    dK_state = (V @ ends.transpose(-1, -2)).mul_(eK)  # (N, L, d_k)
    dQ, dK, dV = intra_backward(Q, K, V, B, dO, out=out[:3])
    dQ.addcmul_(dO @ starts.transpose(-1, -2), B.exp())
    dK.add_(dK_state)
    dV.add_((K * eK) @ ends)
    dB = Q * dQ - K * dK  # (N, L, d_k)
    dB[..., -1, :] += ((starts * ends).sum(-1) * B_last[..., 0, :].exp()
                       + (K * dK_state).sum(-2))
    # dg_l = sum_{t>=l} dB_t, as B_t = sum_{l<=t} g_l
    torch.sub(dB.sum(-2, keepdim=True), dB.cumsum(-2), out=out[3]).add_(dB)


class GlaChunk(torch.autograd.Function):
    """`gla` in chunks with the hand-written backward of the module docstring:
    q, k, g (b, t, h, d_k), v (b, t, h, d_v), state (b, h, d_k, d_v) (not None), scale, C the
    chunk length (<= t) -> o (b, t, h, d_v), the final state.

    Every per-token pass runs over groups of chunks of about `SLICE_TOKENS` tokens, so that
    the elementwise passes (the exponentials of every level) work in the cache; only the
    state carried across chunks runs over all of them at once."""

    @staticmethod
    def forward(ctx, q, k, v, g, state, scale, C):
        b, t, h, _ = q.shape
        L = 1 << (C - 1).bit_length()  # C rounded up to a power of two
        Q, K, V, G = (_pad(chunk(z, C), L).flatten(0, 2) for z in (q * scale, k, v, g))
        n = Q.shape[0] // (b * h)  # Q, K, V, G: (b h n, L, d)
        B = G.cumsum(-2)  # (b h n, L, d_k)
        o = torch.empty_like(V)  # (b h n, L, d_v)
        KV = V.new_empty(Q.shape[0], Q.shape[-1], V.shape[-1])  # (b h n, d_k, d_v)
        groups = _slices(Q.shape[0], L)
        for i in groups:  # what does not depend on the states: within chunks, their writes
            intra_forward(Q[i], K[i], V[i], B[i], out=o[i])
            KV[i] = (K[i] * (B[i, -1:] - B[i]).exp()).transpose(-1, -2) @ V[i]
        starts, S = carry(B[:, -1].exp().unflatten(0, (b, h, n))[..., None],
                          KV.unflatten(0, (b, h, n)), state)  # (b, h, n, d_k, d_v)
        starts = starts.flatten(0, 2)  # (b h n, d_k, d_v)
        for i in groups:  # reads of the start states, decayed to each token
            o[i] += (Q[i] * B[i].exp()) @ starts[i]  # (a plain product: FLOPs are counted)
        ctx.save_for_backward(Q, K, V, B, starts)
        ctx.shape = b, t, h, n, C
        ctx.scale = scale
        return unchunk(o[:, :C].unflatten(0, (b, h, n)), t), S

    @staticmethod
    @float32_recurrence
    @once_differentiable
    def backward(ctx, do, dS):
        Q, K, V, B, starts = ctx.saved_tensors
        (b, t, h, n, C), scale = ctx.shape, ctx.scale
        L = Q.shape[-2]
        dO = torch.zeros_like(V) if do is None else _pad(chunk(do, C), L).flatten(0, 2)
        if dS is None:
            dS = starts.new_zeros(b, h, *starts.shape[1:])
        # the reverse state pass: ends[i] = dL/dS at the end of chunk i
        P = starts.new_empty(starts.shape)  # (b h n, d_k, d_v)
        for i in _slices(Q.shape[0], L):
            torch.matmul((Q[i] * B[i].exp()).transpose(-1, -2), dO[i], out=P[i])
        a = B[:, -1, :, None].exp().unflatten(0, (b, h, n))  # (b, h, n, d_k, 1): chunk decay
        ends = torch.empty_like(P)  # (b h n, d_k, d_v)
        ends_, P_, dS0 = ends.unflatten(0, (b, h, n)), P.unflatten(0, (b, h, n)), dS
        for j in reversed(range(n)):  # dS_{end of j-1} = a_j dS_{end of j} + P_j
            ends_[:, :, j] = dS0
            dS0 = a[:, :, j] * dS0 + P_[:, :, j]  # (b, h, d_k, d_v)
        grads = [torch.empty_like(z) for z in (Q, K, V, B)]  # dQ, dK, dV, dG
        for i in _slices(Q.shape[0], L):
            _chunk_backward(Q[i], K[i], V[i], B[i], starts[i], ends[i], dO[i],
                            tuple(z[i] for z in grads))
        grads[0].mul_(scale)
        dq, dk, dv, dg = (unchunk(z[:, :C].unflatten(0, (b, h, n)), t) for z in grads)
        return dq, dk, dv, dg, dS0, None, None
