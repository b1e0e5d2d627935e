"""The chunked (gated) delta rule with a hand-written backward: the WY / UT transform of Yang
et al. 2024 ("Parallelizing Linear Transformers with the Delta Rule over Sequence Length"),
S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t, o_t = q_t S_t, per head.

Inside a chunk of C tokens starting from the state S_0, with b the cumulative log decay since
the chunk's start, gamma = exp(b), D[t, s] = exp(b_t - b_s) for s <= t (0 above), every chunk
of every head at once (one batched product, or solve, per line):

    (1)  T = (I + L)^-1,  L = tril_{-1}(diag(beta) D * K K^T)      (one batched solve)
    (2)  [U~, W] = T [diag(beta) V, diag(beta gamma) K]            (one product)
    (3)  P = D * Q K^T,   K_end = diag(D[C, :]) K  (k_s gamma_C / gamma_s)

then the state pass, two products per chunk (batched over the heads), and again all at once:

    (4)  U = U~ - W S_0,   S_end = gamma_C S_0 + K_end^T U          (chunk by chunk)
    (5)  o = diag(gamma) Q S_0 + P U.

Chunks are laid out chunk-major (all heads of chunk 0, then of chunk 1, ...), so the state
pass reads contiguous slices. The forward saves its inputs and the chunk-start states S_0
(n_chunks x d_k x d_v per head: memory linear in t), never the (C, C) blocks. The backward
recomputes (1)-(3) and U for all chunks, runs the reverse state pass

    dU = P^T dO + K_end dS_end,   dS_0 = diag(gamma) Q^T dO + gamma_C dS_end - W^T dU

(two products per chunk) and differentiates the rest all chunks at once. Through (1)-(2),
dR = T^T [dU~, dW] with dW = -dU S_0^T, so dR = [T^T dU, -T^T dU S_0^T] and the gradient of L
is -tril_{-1}(dR [U~, W]^T) = -tril_{-1}((T^T dU) U^T): one product by T^T and two more. The
gradient of the cumulative log decay collects every exp(b_t - b_s) it enters as
Z[t, s] = dL/dD[t, s] D[t, s] (+ to b_t, - to b_s), so no quotient of decays is formed: nothing
overflows, however strong the decay. First-order gradients only (no double backward).

On a CPU the intra-chunk solve is done once per chunk as a batched solve against the identity
and then applied as products: a batch of small triangular solves with many right-hand sides
runs far below the rate of a matrix product, and the backward applies T^T again. The state
pass keeps its two products per chunk: folding them into one, S_end = (gamma_C I - K_end^T W)
S_0 + K_end^T U~, still needs U for the outputs and adds C d_k^2 + d_k^2 d_v multiply-adds per
chunk (forming and applying the (d_k, d_k) transition); a CPU thread runs a batch of 16 such
products about as fast per flop as one of 512, so the shorter sequential pass buys nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from seqmem.ops.loops import float32_recurrence


def _decay(b_cum: Tensor) -> Tensor:
    """D[..., t, s] = exp(b_t - b_s) for s <= t, exactly 0 above (`ops.loops.causal_decay`, in
    place on one fresh tensor: the exponents above the diagonal are zeroed before the
    exponential, so none is positive when the log decays are <= 0)."""
    return (b_cum[:, :, None] - b_cum[:, None, :]).tril_().exp_().tril_()


def _blocks(Q: Tensor, K: Tensor, V: Tensor, beta: Tensor, b_cum: Tensor | None, *,
            keep_KD: bool):
    """Steps (1)-(3) for all chunks: Q, K (N, C, d_k), V (N, C, d_v), beta, b_cum (N, C) or
    None (no decay). Returns D (N, C, C) or None (the causal mask), gamma (N, C) or None,
    beta gamma, KD = tril_{-1}(D * K K^T) (None unless keep_KD), T = (I + L)^-1, U~, W, P,
    K_end and a free (N, C, C) buffer (the system, once solved).

    Fresh tensors this size cost more in page faults than the arithmetic done on them, so
    the blocks are built in place and dead buffers are handed on for reuse."""
    N, C, _ = K.shape
    KD = torch.bmm(K, K.mT)  # (N, C, C)
    P = torch.bmm(Q, K.mT)
    if b_cum is None:
        D = gamma = None
        KD.tril_(-1)
        P.tril_()
        bg = beta
    else:
        D, gamma = _decay(b_cum), b_cum.exp()  # (N, C, C), (N, C)
        KD.mul_(D).diagonal(dim1=-2, dim2=-1).zero_()
        P.mul_(D)
        bg = beta * gamma
    system = KD * beta[..., None] if keep_KD else KD.mul_(beta[..., None])
    system.diagonal(dim1=-2, dim2=-1).fill_(1)  # I + L, unit lower triangular
    eye = torch.eye(C, dtype=K.dtype, device=K.device).expand(N, C, C)
    T = torch.linalg.solve_triangular(system, eye, upper=False, unitriangular=True)
    Rk = torch.mul(K, bg[..., None])  # (N, C, d_k)
    U_t, W = torch.bmm(T, V * beta[..., None]), torch.bmm(T, Rk)  # (N, C, d_v), (N, C, d_k)
    # K_end = k_s gamma_C / gamma_s, into Rk (free now)
    K_end = K if D is None else torch.mul(K, D[:, -1, :, None], out=Rk)
    return D, gamma, bg, KD if keep_KD else None, T, U_t, W, P, K_end, system


def _to_chunks(x: Tensor, C: int) -> Tensor:
    """(b, t, h, ...) -> (n b h, C, ...): chunk-major (all heads of chunk 0, then of chunk 1,
    ...), zero-padded to n C tokens, contiguous, in one copy. Padded tokens (k = v = beta = 0,
    log decay 0) change nothing."""
    b, t, h, *rest = x.shape
    n, full = -(-t // C), t // C
    out = x.new_empty(n, b, h, C, *rest)
    view = out.permute(1, 0, 3, 2, *range(4, out.ndim))  # (b, n, C, h, ...)
    if full:
        view[:, :full].copy_(x[:, :full * C].unflatten(1, (full, C)))
    if full < n:
        view[:, full, :t - full * C].copy_(x[:, full * C:])
        view[:, full, t - full * C:].zero_()
    return out.view(n * b * h, C, *rest)


def _from_chunks(y: Tensor, b: int, t: int, h: int) -> Tensor:
    """The inverse of `_to_chunks`: (n b h, C, ...) -> (b, t, h, ...), the padding dropped."""
    N, C, *rest = y.shape
    n, full = N // (b * h), t // C
    view = y.view(n, b, h, C, *rest).permute(1, 0, 3, 2, *range(4, 4 + len(rest)))
    out = y.new_empty(b, t, h, *rest)
    if full:
        out[:, :full * C].unflatten(1, (full, C)).copy_(view[:, :full])
    if full < n:
        out[:, full * C:].copy_(view[:, full, :t - full * C])
    return out


def _chunked_inputs(q, k, v, beta, g, scale, C):
    """Q = scale q, K, V (N, C, d), beta (N, C) and the cumulative log decay since each
    chunk's start (N, C) or None, chunk-major."""
    Q = _to_chunks(q, C).mul_(scale)
    b_cum = None if g is None else _to_chunks(g, C).cumsum_(-1)
    return Q, _to_chunks(k, C), _to_chunks(v, C), _to_chunks(beta, C), b_cum


class _DeltaChunk(torch.autograd.Function):
    """The chunked delta rule: q, k (b, t, h, d_k), v (b, t, h, d_v), beta, g (b, t, h) (g None:
    no decay), S0 (b, h, d_k, d_v), scale, chunk length C -> o (b, t, h, d_v), the final
    state."""

    @staticmethod
    def forward(ctx, q, k, v, beta, g, S0, scale, C):
        b, t, h, d_k = k.shape
        d_v, bh = v.shape[-1], b * h
        Q, K, V, bt, b_cum = _chunked_inputs(q, k, v, beta, g, scale, C)
        N = K.shape[0]
        _, gamma, _, _, _, U, W, P, K_end, _ = _blocks(Q, K, V, bt, b_cum, keep_KD=False)
        # U~ becomes U = U~ - W S_0 in place, chunk by chunk (in-place products are written
        # baddbmm(x, ..., out=x): PyTorch's flop counter does not see baddbmm_)
        states = S0.new_empty(N + bh, d_k, d_v)  # the state at every chunk's start, then S_T
        states[:bh] = S0.reshape(bh, d_k, d_v)
        g_last = None if gamma is None else gamma[:, -1, None, None]  # (N, 1, 1)
        for s in range(0, N, bh):  # no temporaries: each state is written where it is kept
            e, S = s + bh, states[s:s + bh]
            torch.baddbmm(U[s:e], W[s:e], S, alpha=-1, out=U[s:e])
            S_end = torch.bmm(K_end[s:e].mT, U[s:e], out=states[e:e + bh])
            if g_last is None:
                S_end.add_(S)
            else:
                S_end.addcmul_(S, g_last[s:e])
        starts = states[:N]  # (N, d_k, d_v)
        o = torch.bmm(Q, starts)  # (N, C, d_v)
        if gamma is not None:
            o.mul_(gamma[..., None])  # reads S_0 decayed to t
        torch.baddbmm(o, P, U, out=o)
        ctx.save_for_backward(q, k, v, beta, g, starts)
        ctx.scale, ctx.C = scale, C
        return _from_chunks(o, b, t, h), states[N:].view(b, h, d_k, d_v).clone()

    @staticmethod
    @float32_recurrence
    @once_differentiable
    def backward(ctx, d_o, d_S):
        q, k, v, beta, g, starts = ctx.saved_tensors
        b, t, h, d_k = k.shape
        d_v, bh, C = v.shape[-1], b * h, ctx.C
        Q, K, V, bt, b_cum = _chunked_inputs(q, k, v, beta, g, ctx.scale, C)
        N = K.shape[0]
        D, gamma, bg, KD, T, U, W, P, K_end, free = _blocks(Q, K, V, bt, b_cum, keep_KD=True)
        torch.baddbmm(U, W, starts, alpha=-1, out=U)  # (N, C, d_v): U = U~ - W S_0
        Qg = Q if gamma is None else Q * gamma[..., None]
        dO = _to_chunks(d_o, C)  # (N, C, d_v)

        # the reverse state pass, chunk by chunk: dU = P^T dO + K_end dS_end,
        # dS_0 = Qg^T dO + gamma_C dS_end - W^T dU
        dU = torch.bmm(P.mT, dO)  # (N, C, d_v)
        grads = starts.new_empty(N + bh, d_k, d_v)  # dL/d(the state at every chunk's start)
        torch.bmm(Qg.mT, dO, out=grads[:N])  # Qg^T dO, completed in place chunk by chunk
        grads[N:] = d_S.reshape(bh, d_k, d_v)
        g_last = None if gamma is None else gamma[:, -1, None, None]  # (N, 1, 1)
        for s in reversed(range(0, N, bh)):
            e, G, acc = s + bh, grads[s + bh:s + 2 * bh], grads[s:s + bh]
            torch.baddbmm(dU[s:e], K_end[s:e], G, out=dU[s:e])
            if g_last is None:
                acc.add_(G)
            else:
                acc.addcmul_(G, g_last[s:e])
            torch.baddbmm(acc, W[s:e].mT, dU[s:e], alpha=-1, out=acc)
        G = grads[bh:]  # (N, d_k, d_v): dL/dS_end of every chunk

        dQg = torch.bmm(dO, starts.mT)  # (N, C, d_k)
        dP = torch.bmm(dO, U.mT, out=free)  # (N, C, C), only s <= t is used
        dK = torch.bmm(U, G.mT)  # (N, C, d_k): dL/dK_end, then dL/dK
        dRv = torch.bmm(T.mT, dU)  # (N, C, d_v): dL/d(diag(beta) V)
        nRk = torch.bmm(dRv, starts.mT)  # (N, C, d_k): -dL/d(diag(beta gamma) K)
        nA = torch.bmm(dRv, U.mT, out=T).tril_(-1)  # (N, C, C): -dL/dL (T is free now)
        X = KD.mul_(nA)  # -dL/dL[t, s] L[t, s] / beta_t
        kR = torch.einsum("ncd,ncd->nc", nRk, K)  # (N, C)
        d_beta = torch.einsum("ncd,ncd->nc", dRv, V).sub_(X.sum(-1))
        d_beta.sub_(kR if gamma is None else gamma * kR)
        dV = dRv.mul_(bt[..., None])
        nKK = nA.mul_(bt[..., None])  # -dL/d(K K^T) below the diagonal, before the decay
        dg = None
        if D is None:
            dPm = dP.tril_()
        else:
            nKK.mul_(D)
            want_g = ctx.needs_input_grad[4]
            if want_g:
                d_b = torch.einsum("ncd,ncd->nc", dQg, Qg)  # from gamma = exp(b) in Qg
                d_b[:, -1] += torch.einsum("nkv,nkv->n", starts, G) * gamma[:, -1]
                d_end = torch.einsum("ncd,ncd->nc", dK, K_end)  # from K_end = D[C, :] K
            dK.mul_(D[:, -1, :, None])
            dPm = D.mul_(dP)  # D is free after this
            if want_g:
                # every exp(b_t - b_s): Z[t, s] = dL/dD[t, s] D[t, s], + to b_t, - to b_s
                Z = dP.mul_(P).sub_(X.mul_(bt[..., None]))  # from P (P carries D), from L
                Z[:, -1, :] += d_end
                d_b += Z.sum(-1) - Z.sum(-2)
                d_b -= bg * kR  # from gamma in R
                # b = cumsum(g) in the chunk: dL/dg_s = sum_{t >= s} dL/db_t
                dg = _from_chunks(d_b.flip(-1).cumsum(-1).flip(-1), b, t, h)
        torch.baddbmm(dK, dPm.mT, Q, out=dK)
        torch.baddbmm(dK, torch.add(nKK, nKK.mT, out=P), K, alpha=-1, out=dK)  # P is free now
        dK.addcmul_(nRk, bg[..., None], value=-1)
        dq = None
        if ctx.needs_input_grad[0]:
            dQ = dQg if gamma is None else dQg.mul_(gamma[..., None])
            dq = _from_chunks(torch.baddbmm(dQ, dPm, K, out=dQ).mul_(ctx.scale), b, t, h)
        dS0 = grads[:bh].view(b, h, d_k, d_v) if ctx.needs_input_grad[5] else None
        return (dq, _from_chunks(dK, b, t, h), _from_chunks(dV, b, t, h),
                _from_chunks(d_beta, b, t, h), dg, dS0, None, None)


@float32_recurrence
def delta_chunk(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None, S0: Tensor,
                *, scale: float, chunk_size: int) -> tuple[Tensor, Tensor]:
    """The chunked (gated) delta rule (module docstring), differentiated by the hand-written
    backward: q, k (b, t, h, d_k), v (b, t, h, d_v), beta (b, t, h), g (b, t, h) the log decay
    (None: no decay), S0 (b, h, d_k, d_v) the initial state, o_t = scale q_t S_t, chunks of
    chunk_size tokens (t >= 1, chunk_size <= t) -> o (b, t, h, d_v), the final state."""
    return _DeltaChunk.apply(q, k, v, beta, g, S0, scale, chunk_size)
